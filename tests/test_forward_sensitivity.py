"""Forward sensitivities: helpers.odeint(..., gradient="forward").

The sensitivities against closed forms (dz/dt = A z: S = e^{A(t - t0)}; dz/dt = -k z), the
gradients with respect to y0, the parameters and every time against backpropagation through
helpers.odeint (the same steps, so they agree to rounding), the work growing with the number
of directions d + p, and the refused inputs. Each tolerance is the measured error (float64,
noted beside it) times 3 to 10.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import helpers
from helpers.models import MLP
from helpers.time_gradients import TimeInputMLP

from gradient_checks import Decay, Linear, gradients, rel  # tests/gradient_checks.py

F64 = torch.float64
METHODS = {
    "dopri5": dict(method="dopri5", rtol=1e-10, atol=1e-12),
    "rk4": dict(method="rk4", options=dict(step_size=0.01)),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The vmapped products are small batched matmuls; on the shared 2-core machine, two
    threads each took 50 ms where one took 0.1 ms."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


A = torch.tensor([[-0.5, 1.0, 0.2], [-1.0, -0.3, 0.0], [0.1, 0.4, -0.2]], dtype=F64)
T = torch.tensor([0.0, 0.7, 1.5, 2.0], dtype=F64)


# measured largest error of S against e^{A(t - t0)}: dopri5 2.6e-11, rk4 1.4e-10
@pytest.mark.parametrize("method,tol", [("dopri5", 2e-10), ("rk4", 1e-9)])
def test_state_sensitivity_is_the_matrix_exponential(method, tol):
    f = Linear(A)
    y0 = torch.tensor([1.0, 0.5, -0.7], dtype=F64, requires_grad=True)
    ys = helpers.odeint(f, y0, T, gradient="forward", **METHODS[method])
    for i in range(1, len(T)):
        rows = [torch.autograd.grad(ys[i, j], y0, retain_graph=True)[0] for j in range(3)]
        S = torch.stack(rows)
        expected = torch.linalg.matrix_exp(A * (T[i] - T[0]))
        assert rel(S, expected) < tol, (i, rel(S, expected))


# measured relative errors (largest over y0, t, A): dopri5 7.4e-11, rk4 3.4e-10 (rk4's own)
@pytest.mark.parametrize("method,tol", [("dopri5", 4e-10), ("rk4", 2e-9)])
def test_linear_closed_form(method, tol):
    f = Linear(A)
    y0 = torch.tensor([1.0, 0.5, -0.7], dtype=F64)
    w = torch.linspace(-1, 1, 12, dtype=F64).reshape(4, 3)

    def exact(g, y, s):
        return torch.stack([torch.linalg.matrix_exp(g.A * (x - s[0])) @ y for x in s])

    expected = gradients(exact, f, y0, T, w)
    got = gradients(helpers.odeint, f, y0, T, w, gradient="forward", **METHODS[method])
    for name, a, b in zip(("y0", "t", "A"), got, expected):
        assert rel(a, b) < tol, f"{method} d/d{name}: {rel(a, b):.2e}"


# measured: dopri5 2.3e-10, rk4 7.4e-10 (largest over z0, k and the times; a scalar state)
@pytest.mark.parametrize("method,tol", [("dopri5", 1e-9), ("rk4", 4e-9)])
def test_decay_closed_form_scalar_state(method, tol):
    f = Decay(1.3)
    y0 = torch.tensor(2.0, dtype=F64)
    t = torch.tensor([0.2, 0.9, 1.6, 3.0], dtype=F64)
    w = torch.tensor([0.5, 1.0, -1.5, 2.0], dtype=F64)

    def exact(g, y, s):
        return torch.exp(-g.k * (s - s[0])) * y

    expected = gradients(exact, f, y0, t, w)
    got = gradients(helpers.odeint, f, y0, t, w, gradient="forward", **METHODS[method])
    errors = [rel(a, b) for a, b in zip(got, expected)]
    assert max(errors) < tol, errors


# The same steps as backpropagation (step control on the state only), so the two agree to
# rounding: measured 1.9e-15 (dopri5) and 2.5e-15 (rk4), largest over y0, t and the parameters,
# one state or a batch of two.
@pytest.mark.parametrize("method", ["dopri5", "rk4"])
@pytest.mark.parametrize("batch", [False, True])
def test_against_backprop_time_dependent_mlp(method, batch):
    torch.manual_seed(0)
    f = TimeInputMLP((3, 16, 3), dtype=F64)
    y0 = torch.tensor([[0.5, -0.3, 0.8], [0.1, 0.2, -0.4]], dtype=F64)
    if not batch:
        y0 = y0[0]
    t = torch.tensor([0.0, 0.4, 1.1, 1.5], dtype=F64)
    w = torch.randn(4, *y0.shape, dtype=F64)
    back, forward = helpers.SolveStats(), helpers.SolveStats()
    solver = dict(METHODS[method], options=dict(step_size=0.05)) if method == "rk4" else METHODS[method]
    expected = gradients(helpers.odeint, f, y0, t, w, stats=back, **solver)
    got = gradients(helpers.odeint, f, y0, t, w, gradient="forward", stats=forward, **solver)
    assert len(got) == 2 + len(list(f.parameters()))
    errors = [rel(a, b) for a, b in zip(got, expected)]
    assert max(errors) < 2e-14, errors
    assert forward.steps_accepted_forward == back.steps_accepted_forward
    assert forward.steps_rejected_forward == back.steps_rejected_forward


def test_gradient_params_selects_the_directions():
    torch.manual_seed(1)
    f = MLP((2, 8, 2), dtype=F64)
    y0 = torch.tensor([0.3, -0.2], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    last = f.net[2].weight
    stats = helpers.SolveStats()
    ys = helpers.odeint(f, y0, t, gradient="forward", gradient_params=[last], stats=stats)
    g_y0, g_last = torch.autograd.grad(ys[-1].sum(), [y0, last])
    assert stats.sensitivity_directions == 2 + last.numel()
    e_y0, e_last = torch.autograd.grad(helpers.odeint(f, y0, t)[-1].sum(), [y0, last])
    assert rel(g_y0, e_y0) < 1e-12 and rel(g_last, e_last) < 1e-12
    # the other parameters get no gradient from this solve
    ys = helpers.odeint(f, y0, t, gradient="forward", gradient_params=[last])
    assert torch.autograd.grad(ys[-1].sum(), f.net[0].weight, allow_unused=True)[0] is None


@pytest.mark.parametrize("sizes", [(2, 16, 2), (4, 32, 4), (8, 32, 8)])
def test_work_grows_with_the_number_of_directions(sizes):
    """Each evaluation of the sensitivity field does the work of d + p Jacobian–vector products."""
    torch.manual_seed(0)
    f = MLP(sizes, dtype=F64)
    d = sizes[0]
    p = sum(q.numel() for q in f.parameters())
    y0 = torch.randn(d, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    names = [name for name, _ in f.named_parameters()]
    params = tuple(q.detach() for q in f.parameters())

    def f_of(z, *ps):
        return torch.func.functional_call(f, dict(zip(names, ps)), (t[0], z))

    with FlopCounterMode(display=False) as one:
        torch.func.jvp(f_of, (y0.detach(),) + params, tuple(torch.ones_like(x) for x in (y0,) + params))
    with FlopCounterMode(display=False) as plain:
        f(t[0], y0.detach())
    stats = helpers.SolveStats()
    with FlopCounterMode(display=False) as solve:
        helpers.odeint(f, y0, t, gradient="forward", stats=stats, method="rk4", options=dict(step_size=0.1))
    evaluations = stats.nfe_forward - 1  # the first is func alone, checking its output
    assert evaluations == 40  # 10 rk4 steps of 4 stages
    assert stats.sensitivity_directions == d + p
    assert stats.jvps_forward == evaluations * (d + p)
    per_direction = (solve.get_total_flops() - plain.get_total_flops()) / evaluations / (d + p)
    # measured 0.671, 0.668, 0.667 of one full Jacobian–vector product (d + p = 84, 296, 560)
    assert 0.6 < per_direction / one.get_total_flops() < 0.75
    assert stats.sensitivity_bytes == 2 * (d + p) * d * 8


def test_single_time_and_no_gradient_needed():
    f = Linear(A)
    y0 = torch.tensor([1.0, 0.5, -0.7], dtype=F64, requires_grad=True)
    one = helpers.odeint(f, y0, T[:1], gradient="forward")
    assert one.shape == (1, 3) and torch.equal(one[0], y0)
    assert torch.equal(torch.autograd.grad(one.sum(), y0)[0], torch.ones(3, dtype=F64))
    with torch.no_grad():
        stats = helpers.SolveStats()
        ys = helpers.odeint(f, y0, T, gradient="forward", stats=stats, **METHODS["dopri5"])
    # no gradient needed: a plain solve, no sensitivity carried
    assert stats.jvps_forward == 0 and stats.sensitivity_directions == 0
    assert stats.nfe_forward > 0
    assert rel(ys, helpers.odeint(f, y0, T, **METHODS["dopri5"]).detach()) < 1e-14


class RowMixer(nn.Module):
    def forward(self, t, z):
        return -z + z.mean(0, keepdim=True)


@pytest.mark.parametrize("call,words", [
    (lambda f, y, t: helpers.odeint(f, y, t, gradient="reverse"), "gradient must be one of"),
    (lambda f, y, t: helpers.odeint(f, y, t, gradient_params=list(f.parameters())), "gradient_params"),
    (lambda f, y, t: helpers.odeint(lambda s, x: (f(s, x[0]), x[1]), (y, y), t, gradient="forward"),
     "tuple y0"),
    (lambda f, y, t: helpers.odeint(f, y, t, gradient="forward", event_fn=lambda s, x: x[0]), "event_fn"),
    (lambda f, y, t: helpers.odeint(f, y, t, gradient="forward", compiled=True), "compiled"),
    (lambda f, y, t: helpers.odeint(f, torch.stack([y, y]), t, gradient="forward",
                                    options=dict(per_sample_steps=True)), "per_sample_steps"),
    (lambda f, y, t: helpers.odeint(f, y.expand(2, 2, 3), t, gradient="forward"), r"\(d,\) or \(batch, d\)"),
    (lambda f, y, t: helpers.odeint(RowMixer(), torch.stack([y, 2 * y]), t, gradient="forward"),
     "mixes the rows"),
    (lambda f, y, t: helpers.odeint(f, y, t, gradient="forward",
                                    gradient_params=[torch.ones(3, requires_grad=True)]), "not a parameter"),
    (lambda f, y, t: helpers.odeint(lambda s, x: f(s, x), y, t, gradient="forward",
                                    gradient_params=list(f.parameters())), "nn.Module"),
    (lambda f, y, t: helpers.odeint(f, y, t, gradient="forward", gradient_params=f.A), "sequence"),
])
def test_bad_input_is_refused_by_name(call, words):
    f = Linear(A)
    y0 = torch.tensor([1.0, 0.5, -0.7], dtype=F64, requires_grad=True)
    with pytest.raises((ValueError, TypeError), match=words):
        call(f, y0, T)


def test_second_order_gradient_is_refused():
    f = Linear(A)
    y0 = torch.tensor([1.0, 0.5, -0.7], dtype=F64, requires_grad=True)
    ys = helpers.odeint(f, y0, T, gradient="forward")
    with pytest.raises(ValueError, match="higher-order"):
        torch.autograd.grad(ys.sum(), y0, create_graph=True)


def test_untracked_tensor_and_callbacks_are_refused():
    w = torch.tensor(0.5, dtype=F64, requires_grad=True)
    y0 = torch.ones(2, dtype=F64)
    with pytest.raises(ValueError, match="gradient_params"):
        helpers.odeint(lambda t, y: -w * y, y0, T, gradient="forward")
    f = Linear(torch.eye(2, dtype=F64))
    f.callback_step = lambda t0, y, dt: None
    with pytest.raises(ValueError, match="callback_step"):
        helpers.odeint(f, y0, T, gradient="forward")
