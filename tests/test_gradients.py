"""Gradients of odeint and odeint_adjoint: closed forms, finite differences, gradcheck, seminorm.

The closed-form checks use problems whose exact solution is built from differentiable torch
operations (helpers.problems), so autograd through ``exact`` gives the true gradients with
respect to y0, the parameters and every requested time (t0, intermediate times and t1).
"""
from __future__ import annotations

import pytest
import torch

import helpers
from helpers.models import MLP
from helpers.problems import ExponentialODE, LinearODE, TimeDependentODE

F64 = torch.float64
SOLVERS = {"odeint": helpers.odeint, "odeint_adjoint": helpers.odeint_adjoint}
TIGHT = dict(rtol=1e-10, atol=1e-12)
METHODS = {
    "dopri5": dict(method="dopri5", **TIGHT),
    "bosh3": dict(method="bosh3", **TIGHT),
    "rk4": dict(method="rk4", options=dict(step_size=0.01)),
}


def assert_rel_close(actual, expected, rtol, what=""):
    """Elementwise agreement to ``rtol`` relative to the size of ``expected`` as a whole."""
    assert actual is not None, f"{what}: no gradient"
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert err <= rtol * max(scale, 1e-300), f"{what}: max error {err:.3e}, {err / scale:.3e} relative (allowed {rtol:g})"


def rel_err(actual, expected) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


def make_problem(name, device):
    if name == "linear":
        A = torch.tensor([[-0.5, 1.0, 0.2], [-1.0, -0.3, 0.0], [0.1, 0.4, -0.2]], dtype=F64)
        return LinearODE(A.to(device)), torch.tensor([1.0, 0.5, -0.7], dtype=F64, device=device)
    f = TimeDependentODE(a=-0.3, b=0.8, dtype=F64).to(device)
    return f, torch.tensor([1.0, -0.5, 2.0], dtype=F64, device=device)


def solve_and_grad(solver, f, y0, t, w, **kwargs):
    """ys and the gradients of Σ w ⊙ ys with respect to (y0, t, *parameters)."""
    y0 = y0.detach().clone().requires_grad_(True)
    t = t.detach().clone().requires_grad_(True)
    params = list(f.parameters())
    ys = solver(f, y0, t, **kwargs)
    grads = torch.autograd.grad((w * ys).sum(), [y0, t] + params)
    return ys.detach(), grads


def exact_and_grad(f, y0, t, w):
    return solve_and_grad(lambda func, y, s: func.exact(y, s), f, y0, t, w)


# --- closed forms ------------------------------------------------------------------------


@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("problem", ["linear", "time-dependent"])
def test_gradients_match_closed_form(device, problem, direction, method, solver):
    f, y0 = make_problem(problem, device)
    t = torch.tensor([0.2, 0.5, 0.9, 1.4], dtype=F64, device=device)
    if direction == "backward":
        t = -t  # strictly decreasing: integrate backward in time from t0 = -0.2
    w = torch.randn(len(t), *y0.shape, dtype=F64).to(device)  # every output time weighs in

    ys, grads = solve_and_grad(SOLVERS[solver], f, y0, t, w, **METHODS[method])
    ys_exact, grads_exact = exact_and_grad(f, y0, t, w)

    assert_rel_close(ys, ys_exact, 1e-7, "solution")
    names = ["y0", "t"] + [n for n, _ in f.named_parameters()]
    for name, g, ge in zip(names, grads, grads_exact):
        assert g.shape == ge.shape and g.dtype == ge.dtype and g.device == ge.device
        assert_rel_close(g, ge, 1e-6, f"dL/d{name}")
    # t0, the intermediate times and t1 each get their own (nonzero) gradient
    assert (grads_exact[1].abs() > 1e-3).all()


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_batch_gradients_match_closed_form(device, solver):
    """A batch of states, shape (B, d): every row's gradients, and the shared parameters'."""
    f, _ = make_problem("time-dependent", device)
    y0 = torch.randn(4, 3, dtype=F64).to(device)
    t = torch.tensor([0.2, 0.5, 0.9, 1.4], dtype=F64, device=device)
    w = torch.randn(4, 4, 3, dtype=F64).to(device)
    ys, grads = solve_and_grad(SOLVERS[solver], f, y0, t, w, **TIGHT)
    ys_exact, grads_exact = exact_and_grad(f, y0, t, w)
    assert ys.shape == (4, 4, 3)
    assert_rel_close(ys, ys_exact, 1e-7, "solution")
    for name, g, ge in zip(["y0", "t", "a", "b"], grads, grads_exact):
        assert g.shape == ge.shape
        assert_rel_close(g, ge, 1e-6, f"dL/d{name}")


@pytest.mark.parametrize("norm", ["seminorm", "full"])
def test_adjoint_closed_form_with_each_norm(device, norm):
    f, y0 = make_problem("time-dependent", device)
    t = torch.tensor([0.0, 0.7, 1.5], dtype=F64, device=device)
    w = torch.randn(3, 3, dtype=F64).to(device)
    _, grads = solve_and_grad(helpers.odeint_adjoint, f, y0, t, w, adjoint_options=dict(norm=norm), **TIGHT)
    _, grads_exact = exact_and_grad(f, y0, t, w)
    for g, ge in zip(grads, grads_exact):
        assert_rel_close(g, ge, 1e-6, norm)


@pytest.mark.parametrize("adjoint_kwargs", [
    dict(adjoint_method="rk4", adjoint_options=dict(step_size=0.005)),
    dict(adjoint_method="bosh3"),
    dict(adjoint_options=dict(checkpoints=3)),
    dict(adjoint_rtol=1e-11, adjoint_atol=1e-13),
], ids=["rk4-backward", "bosh3-backward", "checkpoints", "adjoint-tolerances"])
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_adjoint_settings_still_match_closed_form(device, adjoint_kwargs, direction):
    f, y0 = make_problem("linear", device)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=F64, device=device)
    if direction == "backward":
        t = 0.5 - t
    w = torch.randn(3, 3, dtype=F64).to(device)
    ys, grads = solve_and_grad(helpers.odeint_adjoint, f, y0, t, w, **TIGHT, **adjoint_kwargs)
    ys_exact, grads_exact = exact_and_grad(f, y0, t, w)
    assert ys.shape == ys_exact.shape
    assert_rel_close(ys, ys_exact, 1e-7, "solution")
    for g, ge in zip(grads, grads_exact):
        assert_rel_close(g, ge, 1e-6, str(adjoint_kwargs))


@pytest.mark.parametrize("adjoint_options", [
    pytest.param(None, id="none"),
    pytest.param({}, id="empty"),
    pytest.param(dict(norm="full"), id="norm"),
    pytest.param(dict(checkpoints=2), id="checkpoints"),
])
def test_fixed_step_adjoint_inherits_step_size(device, adjoint_options):
    """odeint_adjoint's docs: "When the backward method is the forward one, ``step_size`` and
    ``max_num_steps`` default to the forward values" -- also when adjoint_options is given
    but does not set them."""
    f, y0 = make_problem("linear", device)
    t = torch.tensor([0.0, 1.0, 2.0], dtype=F64, device=device)
    w = torch.randn(3, 3, dtype=F64).to(device)
    stats = helpers.SolveStats()
    _, grads = solve_and_grad(helpers.odeint_adjoint, f, y0, t, w, method="rk4", options=dict(step_size=0.01),
                              adjoint_options=adjoint_options, stats=stats)
    _, grads_exact = exact_and_grad(f, y0, t, w)
    assert stats.steps_accepted_backward >= 200
    for g, ge in zip(grads, grads_exact):
        assert_rel_close(g, ge, 1e-6, f"adjoint_options={adjoint_options}")


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_partial_requires_grad(device, solver):
    """Only some inputs need gradients: the others get none and the rest are still right."""
    f = TimeDependentODE(dtype=F64).to(device)
    y0 = torch.tensor([1.0, 2.0], dtype=F64, device=device)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64, device=device)
    w = torch.randn(3, 2, dtype=F64).to(device)
    kwargs = dict(TIGHT)
    if solver == "odeint_adjoint":
        kwargs["adjoint_params"] = [f.a]  # differentiate with respect to a only
    ys = SOLVERS[solver](f, y0, t, **kwargs)
    (w * ys).sum().backward()
    _, grads_exact = exact_and_grad(f, y0, t, w)
    assert_rel_close(f.a.grad, grads_exact[2], 1e-6, "a")
    if solver == "odeint_adjoint":
        assert f.b.grad is None
    else:
        assert_rel_close(f.b.grad, grads_exact[3], 1e-6, "b")
    # and only t
    t = t.clone().requires_grad_(True)
    ys = SOLVERS[solver](lambda s, z: -0.5 * z, y0, t, **TIGHT)
    (g_t,) = torch.autograd.grad((w * ys).sum(), [t])
    g_t_exact = torch.zeros(3, dtype=F64, device=device)
    g_t_exact[1:] = (w[1:] * (-0.5) * ys.detach()[1:]).sum(dim=1)
    g_t_exact[0] = -g_t_exact[1:].sum()  # shifting all the times together changes nothing
    assert_rel_close(g_t, g_t_exact, 1e-6, "t")


def test_second_order_gradient_through_odeint(device):
    """odeint backpropagates through the solver, so it gives second derivatives too."""
    f = ExponentialODE(0.4, dtype=F64).to(device)
    y0 = torch.tensor([1.5], dtype=F64, device=device)
    T = 1.3
    t = torch.tensor([0.0, T], dtype=F64, device=device)
    ys = helpers.odeint(f, y0, t, method="rk4", options=dict(step_size=0.01))
    (d1,) = torch.autograd.grad(ys[-1].sum(), [f.theta], create_graph=True)
    (d2,) = torch.autograd.grad(d1, [f.theta])
    exact_d1 = 1.5 * T * torch.exp(torch.tensor(0.4 * T, dtype=F64))
    exact_d2 = 1.5 * T ** 2 * torch.exp(torch.tensor(0.4 * T, dtype=F64))
    assert abs(d1.item() - exact_d1.item()) < 1e-8 * exact_d1.item()
    assert abs(d2.item() - exact_d2.item()) < 1e-8 * exact_d2.item()


# --- an MLP: adjoint vs backprop vs finite differences ------------------------------------


def test_mlp_adjoint_vs_backprop_vs_finite_differences(device):
    f = MLP((2, 16, 16, 2), dtype=F64, device=device)
    y0 = torch.randn(3, 2, dtype=F64).to(device)
    t = torch.tensor([0.0, 0.4, 0.8, 1.2], dtype=F64, device=device)
    w = torch.randn(4, 3, 2, dtype=F64).to(device)
    kwargs = dict(rtol=1e-11, atol=1e-13)
    params = list(f.parameters())

    ys_bp, g_bp = solve_and_grad(helpers.odeint, f, y0, t, w, **kwargs)
    ys_adj, g_adj = solve_and_grad(helpers.odeint_adjoint, f, y0, t, w, **kwargs)
    assert torch.allclose(ys_bp, ys_adj, rtol=0, atol=1e-12)  # the same forward solve

    # directional derivatives by central differences, in random directions
    v_y0 = torch.randn_like(y0)
    v_t = torch.randn_like(t) * 0.1
    v_p = [torch.randn_like(p) for p in params]

    def loss(eps_y0=0.0, eps_t=0.0, eps_p=0.0):
        with torch.no_grad():
            backup = [p.clone() for p in params]
            for p, v in zip(params, v_p):
                p.add_(eps_p * v)
            value = (w * helpers.odeint(f, y0 + eps_y0 * v_y0, t + eps_t * v_t, **kwargs)).sum().item()
            for p, b in zip(params, backup):
                p.copy_(b)
        return value

    eps = 1e-4
    fd = {
        "y0": (loss(eps_y0=eps) - loss(eps_y0=-eps)) / (2 * eps),
        "t": (loss(eps_t=eps) - loss(eps_t=-eps)) / (2 * eps),
        "params": (loss(eps_p=eps) - loss(eps_p=-eps)) / (2 * eps),
    }
    for name, g in [("backprop", g_bp), ("adjoint", g_adj)]:
        directional = {
            "y0": (g[0] * v_y0).sum().item(),
            "t": (g[1] * v_t).sum().item(),
            "params": sum((gp * v).sum().item() for gp, v in zip(g[2:], v_p)),
        }
        for key in fd:
            err = abs(directional[key] - fd[key]) / abs(fd[key])
            print(f"\n{name} vs finite differences, d/d{key}: {directional[key]:.10f} vs {fd[key]:.10f} (rel {err:.1e})", end="")
            assert err < 1e-6
    for name, a, b in zip(["y0", "t"] + [f"param{i}" for i in range(len(params))], g_adj, g_bp):
        assert_rel_close(a, b, 1e-7, f"adjoint vs backprop, {name}")


# --- gradcheck -------------------------------------------------------------------------------


def _field(theta):
    def f(s, z):
        return torch.tanh(z @ theta.T) + 0.3 * torch.sin(2.0 * s) * z
    return f


@pytest.mark.parametrize("solver,kwargs", [
    ("odeint", dict(method="rk4", options=dict(step_size=0.05))),
    ("odeint", dict(method="dopri5", **TIGHT)),
    ("odeint_adjoint", dict(method="dopri5", **TIGHT)),
    ("odeint_adjoint", dict(method="rk4", options=dict(step_size=0.007))),
], ids=["odeint-rk4", "odeint-dopri5", "adjoint-dopri5", "adjoint-rk4"])
def test_gradcheck(device, solver, kwargs):
    y0 = torch.tensor([0.3, -0.6], dtype=F64, device=device, requires_grad=True)
    # interval lengths are not multiples of step_size: the step count must not change under the perturbation
    t = torch.tensor([0.1, 0.47, 0.93], dtype=F64, device=device, requires_grad=True)
    theta = torch.tensor([[-0.4, 0.9], [-0.8, 0.1]], dtype=F64, device=device, requires_grad=True)

    def fn(y0, t, theta):
        extra = dict(adjoint_params=[theta]) if solver == "odeint_adjoint" else {}
        return SOLVERS[solver](_field(theta), y0, t, **kwargs, **extra)

    assert torch.autograd.gradcheck(fn, (y0, t, theta), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_gradcheck_backward_in_time(device, solver):
    y0 = torch.tensor([0.3, -0.6], dtype=F64, device=device, requires_grad=True)
    t = torch.tensor([0.9, 0.3, -0.2], dtype=F64, device=device, requires_grad=True)
    theta = torch.tensor([[-0.4, 0.9], [-0.8, 0.1]], dtype=F64, device=device, requires_grad=True)

    def fn(y0, t, theta):
        extra = dict(adjoint_params=[theta]) if solver == "odeint_adjoint" else {}
        return SOLVERS[solver](_field(theta), y0, t, **TIGHT, **extra)

    assert torch.autograd.gradcheck(fn, (y0, t, theta), eps=1e-6, atol=1e-6, rtol=1e-4)


# --- seminorm -------------------------------------------------------------------------------


def test_seminorm_vs_full_norm(device):
    """Both norms give accurate gradients; the seminorm takes no more backward evaluations."""
    f = MLP((2, 32, 32, 2), dtype=F64).to(device)  # the same network on every device
    y0 = torch.randn(8, 2, dtype=F64).to(device)
    t = torch.linspace(0.0, 2.0, 5, dtype=F64, device=device)
    w = torch.randn(5, 8, 2, dtype=F64).to(device)
    _, g_ref = solve_and_grad(helpers.odeint, f, y0, t, w, rtol=1e-11, atol=1e-13)

    rows = []
    nfe = {}
    for tol in (1e-5, 1e-8):
        for norm in ("seminorm", "full"):
            stats = helpers.SolveStats()
            _, g = solve_and_grad(helpers.odeint_adjoint, f, y0, t, w, rtol=tol, atol=tol * 1e-2,
                                  adjoint_options=dict(norm=norm), stats=stats)
            errs = [rel_err(a, b) for a, b in zip(g, g_ref)]
            nfe[tol, norm] = stats.nfe_backward
            rows.append(f"rtol {tol:g} {norm:8s}: nfe forward {stats.nfe_forward:4d}, backward {stats.nfe_backward:4d} "
                        f"({stats.steps_accepted_backward} accepted, {stats.steps_rejected_backward} rejected); "
                        f"max relative gradient error vs backprop {max(errs):.1e}")
            # measured max relative gradient errors: 4.0e-7 at rtol 1e-5, 2.3e-9 at rtol 1e-8 (both norms)
            assert max(errs) < {1e-5: 2e-6, 1e-8: 1e-8}[tol]
    print("\n" + "\n".join(rows))
    for tol in (1e-5, 1e-8):
        assert nfe[tol, "seminorm"] <= nfe[tol, "full"]
    assert any(nfe[tol, "seminorm"] < nfe[tol, "full"] for tol in (1e-5, 1e-8)), "the seminorm saved nothing"


def test_seminorm_is_the_default_for_adaptive_adjoint(device):
    f = MLP((2, 32, 2), dtype=F64, device=device)
    y0 = torch.randn(4, 2, dtype=F64).to(device)
    t = torch.linspace(0.0, 1.0, 3, dtype=F64, device=device)
    counts = {}
    for name, opts in [("default", None), ("seminorm", dict(norm="seminorm")), ("full", dict(norm="full"))]:
        stats = helpers.SolveStats()
        helpers.odeint_adjoint(f, y0, t, rtol=1e-8, atol=1e-10, adjoint_options=opts, stats=stats).sum().backward()
        counts[name] = stats.nfe_backward
    print(f"\nbackward NFE: {counts}")
    assert counts["default"] == counts["seminorm"]


def test_augmented_dynamics_closed_form(device):
    """d/dt [z, λ, a_θ] = [A z, -Aᵀ λ, -λ zᵀ] for f(z) = A z (θ = A)."""
    A = torch.randn(3, 3, dtype=F64).to(device)
    f = LinearODE(A)
    z = torch.randn(3, dtype=F64).to(device)
    lam = torch.randn(3, dtype=F64).to(device)
    dyn = helpers.AugmentedDynamics(f, z.shape, list(f.parameters()))
    state = torch.cat([z, lam, torch.zeros(9, dtype=F64, device=device)])
    out = dyn(torch.tensor(0.0, dtype=F64, device=device), state)
    dz, dlam, da = dyn.split(out)
    torch.testing.assert_close(dz, A @ z)
    torch.testing.assert_close(dlam, -A.T @ lam)
    torch.testing.assert_close(da.view(3, 3), -torch.outer(lam, z))
    assert not out.requires_grad
