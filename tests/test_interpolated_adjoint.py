"""The interpolating adjoint: odeint_adjoint(..., adjoint_options=dict(reconstruct="interpolate")).

Gradients with respect to y0, the parameters and every time, against closed forms and against
backpropagation through helpers.odeint; a dissipative problem on which integrating z backward
(the default "backsolve") is far off and reading z from the dense output is not; the stored
steps; the refused combinations. Each tolerance is the measured error (float64, noted beside
it) times 3 to 10.
"""
from __future__ import annotations

import pytest
import torch

import helpers
from helpers.time_gradients import TimeInputMLP

from gradient_checks import Decay, Linear, gradients, rel  # tests/gradient_checks.py

F64 = torch.float64
INTERP = dict(reconstruct="interpolate")
METHODS = {
    "dopri5": dict(method="dopri5", rtol=1e-10, atol=1e-12),
    "rk4": dict(method="rk4", options=dict(step_size=0.01)),
}


def linear_problem():
    A = torch.tensor([[-0.5, 1.0, 0.2], [-1.0, -0.3, 0.0], [0.1, 0.4, -0.2]], dtype=F64)
    y0 = torch.tensor([1.0, 0.5, -0.7], dtype=F64)
    t = torch.tensor([0.0, 0.7, 1.5, 2.0], dtype=F64)
    w = torch.linspace(-1, 1, 12, dtype=F64).reshape(4, 3)
    return Linear(A), y0, t, w


def linear_exact(f, y0, t):
    return torch.stack([torch.linalg.matrix_exp(f.A * (s - t[0])) @ y0 for s in t])


# measured relative errors (largest over y0, t, A): dopri5 6.5e-11, rk4 1.1e-10
@pytest.mark.parametrize("method,tol", [("dopri5", 3e-10), ("rk4", 5e-10)])
def test_linear_closed_form(method, tol):
    f, y0, t, w = linear_problem()
    expected = gradients(lambda g, y, s: linear_exact(g, y, s), f, y0, t, w)
    got = gradients(helpers.odeint_adjoint, f, y0, t, w, adjoint_options=INTERP, **METHODS[method])
    for name, a, b in zip(("y0", "t", "A"), got, expected):
        assert rel(a, b) < tol, f"{method} d/d{name}: {rel(a, b):.2e}"


# measured: dopri5 3.0e-11, rk4 3.5e-10 (largest over z0, k and the times; rk4's own error)
@pytest.mark.parametrize("method,tol", [("dopri5", 2e-10), ("rk4", 2e-9)])
def test_decay_closed_form(method, tol):
    f = Decay(1.3)
    y0 = torch.tensor([2.0, -0.5], dtype=F64)
    t = torch.tensor([0.2, 0.9, 1.6, 3.0], dtype=F64)
    w = torch.linspace(0.5, 2.0, 8, dtype=F64).reshape(4, 2)

    def exact(g, y, s):
        return torch.exp(-g.k * (s - s[0]))[:, None] * y

    expected = gradients(exact, f, y0, t, w)
    got = gradients(helpers.odeint_adjoint, f, y0, t, w, adjoint_options=INTERP, **METHODS[method])
    errors = [rel(a, b) for a, b in zip(got, expected)]
    assert max(errors) < tol, errors


# measured against backpropagation through helpers.odeint: dopri5 5.4e-10, rk4 4.5e-12
@pytest.mark.parametrize("method,tol", [("dopri5", 3e-9), ("rk4", 3e-11)])
def test_against_backprop_time_dependent_mlp(method, tol):
    torch.manual_seed(0)
    f = TimeInputMLP((3, 16, 3), dtype=F64)
    y0 = torch.tensor([[0.5, -0.3, 0.8], [0.1, 0.2, -0.4]], dtype=F64)
    t = torch.tensor([0.0, 0.4, 1.1, 1.5], dtype=F64)
    w = torch.randn(4, 2, 3, dtype=F64)
    expected = gradients(helpers.odeint, f, y0, t, w, **METHODS[method])
    got = gradients(helpers.odeint_adjoint, f, y0, t, w, adjoint_options=INTERP, **METHODS[method])
    assert len(got) == 2 + len(list(f.parameters()))
    errors = [rel(a, b) for a, b in zip(got, expected)]
    assert max(errors) < tol, errors


def test_dissipative_problem_backsolve_is_off_interpolate_is_not():
    """A fast mode (rate about 40) that dies out: integrating z backward from z(1) blows it up."""
    A = torch.tensor([[-1.0, 0.5], [2.0, -40.0]], dtype=F64)
    f = Linear(A)
    y0 = torch.tensor([1.0, 1.0], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    w = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=F64)
    expected = gradients(lambda g, y, s: linear_exact(g, y, s), f, y0, t, w)
    kwargs = dict(method="dopri5", rtol=1e-7, atol=1e-9)
    back = gradients(helpers.odeint_adjoint, f, y0, t, w, **kwargs)
    interp = gradients(helpers.odeint_adjoint, f, y0, t, w, adjoint_options=INTERP, **kwargs)
    err_back, err_interp = rel(back[2], expected[2]), rel(interp[2], expected[2])
    print(f"dL/dA relative error: backsolve {err_back:.2e}, interpolate {err_interp:.2e}")
    # measured: backsolve 1.5e7 (the reconstructed z is garbage), interpolate 2.5e-6
    assert err_back > 1.0
    assert err_interp < 1e-5


@pytest.mark.parametrize("method,k", [("dopri5", 5), ("rk4", 4), ("bosh3", 4)])
def test_stats_count_the_stored_steps(method, k):
    f, y0, t, w = linear_problem()
    stats = helpers.SolveStats()
    kwargs = dict(METHODS.get(method, dict(method=method, rtol=1e-6, atol=1e-8)))
    helpers.odeint_adjoint(f, y0.requires_grad_(), t, adjoint_options=INTERP, stats=stats, **kwargs)
    assert stats.dense_steps == stats.steps_accepted_forward > 0
    # per step k vectors of the state's 3 entries (dopri5 keeps its fourth-order term too)
    assert stats.dense_bytes == stats.dense_steps * k * 3 * 8
    assert f"dense output kept for {stats.dense_steps} steps" in str(stats)
    assert helpers.SolveStats().dense_steps == 0  # declared, zero until a solve keeps some


def test_tuple_state_and_single_time():
    # measured: 2.2e-11 (y0), 5.7e-11 (A)
    f, y0, t, w = linear_problem()

    def pair(s, state):
        a, b = state
        z = f(s, torch.cat([a, b]))
        return z[:1], z[1:]

    a0 = y0[:1].clone().requires_grad_(True)
    b0 = y0[1:].clone().requires_grad_(True)
    ys = helpers.odeint_adjoint(pair, (a0, b0), t, adjoint_params=list(f.parameters()),
                                adjoint_options=INTERP, **METHODS["dopri5"])
    loss = (w[:, :1] * ys[0]).sum() + (w[:, 1:] * ys[1]).sum()
    got = torch.autograd.grad(loss, [a0, b0, f.A])
    expected = gradients(lambda g, y, s: linear_exact(g, y, s), f, y0, t, w)
    assert rel(torch.cat(got[:2]), expected[0]) < 3e-10
    assert rel(got[2], expected[2]) < 3e-10
    one = helpers.odeint_adjoint(f, y0, t[:1], adjoint_options=INTERP)
    assert one.shape == (1, 3) and torch.equal(one[0], y0)


@pytest.mark.parametrize("adjoint_options,kwargs,words", [
    (dict(reconstruct="spline"), {}, "adjoint_options['reconstruct']"),
    (dict(reconstruct="interpolate", checkpoints=3), {}, "checkpoints"),
    (dict(reconstruct="interpolate"), dict(options=dict(per_sample_steps=True)), "per_sample_steps"),
    (dict(reconstruct="interpolate"), dict(compiled=True), "compiled"),
    (dict(reconstruct="interpolate"), dict(event_fn=lambda t, y: y[0]), "event_fn"),
    (dict(reconstruct="interpolate"), dict(options=dict(jump_t=[0.5])), "jump_t"),
    (dict(reconstruct="interpolate", norm=lambda parts: 0.0), {}, "adjoint_options['norm']"),
])
def test_refused_combinations_name_the_option(adjoint_options, kwargs, words):
    f, y0, t, _ = linear_problem()
    y0 = torch.stack([y0, y0])
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        helpers.odeint_adjoint(f, y0, t, adjoint_options=adjoint_options, **kwargs)


def test_replacing_the_norm_on_grad_fn_is_refused():
    f, y0, t, _ = linear_problem()
    ys = helpers.odeint_adjoint(f, y0.requires_grad_(), t, adjoint_options=INTERP)
    assert ys.grad_fn.adjoint_options == {"norm": "seminorm", "reconstruct": "interpolate"}
    ys.grad_fn.adjoint_options["norm"] = lambda parts: 0.0
    with pytest.raises(ValueError, match="grad_fn.adjoint_options"):
        ys.sum().backward()


def test_adjoint_callbacks_are_refused():
    f, y0, t, _ = linear_problem()
    f.callback_step_adjoint = lambda t0, y, dt: None
    with pytest.raises(ValueError, match="callback_step_adjoint"):
        helpers.odeint_adjoint(f, y0, t, adjoint_options=INTERP)


def test_untracked_tensor_is_refused():
    w = torch.tensor(0.5, dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match="adjoint_params"):
        helpers.odeint_adjoint(lambda t, y: -w * y, torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64),
                               adjoint_options=INTERP)
