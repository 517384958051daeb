"""The forward solvers: convergence orders, tolerances, dense output, options, time direction,
dtypes and batch shapes, checked against closed-form solutions."""
from __future__ import annotations

import math

import pytest
import torch

import helpers
from helpers.models import MLP
from helpers.problems import ExponentialODE, LinearODE, TimeDependentODE

F64 = torch.float64
SPIRAL_A = [[-0.1, 1.0], [-1.0, -0.1]]


def linear_problem(device, dtype=F64):
    f = LinearODE(torch.tensor(SPIRAL_A, dtype=dtype, device=device))
    y0 = torch.tensor([1.0, 0.0], dtype=dtype, device=device)
    return f, y0


def max_err(a, b) -> float:
    return (a - b).abs().max().item()


# --- convergence orders of the fixed-step methods ----------------------------------------


def _problems(device):
    f_lin, y_lin = linear_problem(device)
    f_td = TimeDependentODE(a=-0.5, b=0.5, dtype=F64).to(device)
    y_td = torch.tensor([1.0, -2.0], dtype=F64, device=device)
    return {"linear": (f_lin, y_lin, 2.0), "time-dependent": (f_td, y_td, 1.0)}


@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
@pytest.mark.parametrize("problem", ["linear", "time-dependent"])
def test_fixed_step_convergence_order(device, method, order, problem):
    f, y0, T = _problems(device)[problem]
    t = torch.tensor([0.0, T], dtype=F64, device=device)
    with torch.no_grad():
        exact = f.exact(y0, t)[-1]
        errors = []
        for h in (0.1, 0.05, 0.025, 0.0125):
            y = helpers.odeint(f, y0, t, method=method, options=dict(step_size=h))
            errors.append((y[-1] - exact).norm().item())
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    print(f"\n{method} on {problem}: errors {['%.2e' % e for e in errors]}, observed orders {['%.3f' % o for o in orders]}")
    for o in orders:
        assert abs(o - order) < 0.15, f"observed order {o:.3f}, expected {order}"


# --- adaptive methods: error follows the tolerance ---------------------------------------


@pytest.mark.parametrize("method,tols", [("dopri5", (1e-3, 1e-5, 1e-7, 1e-9)), ("bosh3", (1e-3, 1e-5, 1e-7))])
def test_adaptive_error_decreases_with_tolerance(device, method, tols):
    f = LinearODE(torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=F64, device=device))
    y0 = torch.tensor([1.0, 0.0], dtype=F64, device=device)
    t = torch.tensor([0.0, 10.0], dtype=F64, device=device)
    with torch.no_grad():
        exact = f.exact(y0, t)[-1]
        errors, steps = [], []
        for tol in tols:
            y = helpers.odeint(f, y0, t, method=method, rtol=tol, atol=tol)
            errors.append(max_err(y[-1], exact))
            steps.append(helpers.last_stats().steps_accepted_forward)
    print(f"\n{method}: tol {tols} -> error {['%.2e' % e for e in errors]}, accepted steps {steps}")
    assert all(b < a for a, b in zip(errors, errors[1:])), "the error must fall as the tolerance tightens"
    assert all(b > a for a, b in zip(steps, steps[1:])), "tighter tolerance must take more steps"
    # the tolerance bounds each step's local error; the global error at t = 10 measured 4.0-6.3 x tol
    # for dopri5 and 26-32 x tol for bosh3 (the same on every tolerance): allow about 3x that
    bound = {"dopri5": 20, "bosh3": 100}[method]
    for tol, err in zip(tols, errors):
        assert err < bound * tol, f"error {err:.2e} is far above the tolerance {tol:g}"
    # over the whole range the error falls about in proportion to the tolerance
    assert errors[-1] / errors[0] < 10 * tols[-1] / tols[0]


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_dense_output_is_interpolated_and_accurate(device, method):
    """Many output times: the same steps as with two, and every output accurate to ~the tolerance."""
    f = LinearODE(torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=F64, device=device))
    y0 = torch.tensor([1.0, 0.0], dtype=F64, device=device)
    tol = 1e-8 if method == "dopri5" else 1e-6
    t_many = torch.linspace(0.0, 10.0, 501, dtype=F64, device=device)
    with torch.no_grad():
        exact = f.exact(y0, t_many)
        helpers.odeint(f, y0, t_many[[0, -1]], method=method, rtol=tol, atol=tol)
        steps_two = helpers.last_stats().steps_accepted_forward
        ys = helpers.odeint(f, y0, t_many, method=method, rtol=tol, atol=tol)
        stats = helpers.last_stats()
    err_all = max_err(ys, exact)
    err_end = max_err(ys[-1], exact[-1])
    print(f"\n{method} dense output, tol {tol:g}: max error over 501 outputs {err_all:.2e} "
          f"(at the end {err_end:.2e}); {stats.steps_accepted_forward} steps for 501 outputs, {steps_two} for 2")
    assert ys.shape == (501, 2)
    assert stats.steps_accepted_forward == steps_two, "output times must be interpolated, not stepped onto"
    assert stats.steps_accepted_forward < 500
    # measured: 4.5e-8 at tol 1e-8 (dopri5), 3.2e-5 at tol 1e-6 (bosh3), as in the test above
    assert err_all < {"dopri5": 20, "bosh3": 100}[method] * tol
    # interpolated outputs are as good as the stepped end point (measured ratio 1.03 and 1.003)
    assert err_all < 3 * max(err_end, tol)


def test_dense_output_between_outputs_matches_stepping(device):
    """Outputs interpolated inside steps agree with a solve that ends exactly there."""
    f, y0 = linear_problem(device)
    t = torch.tensor([0.0, 0.37, 1.91, 3.0], dtype=F64, device=device)
    with torch.no_grad():
        ys = helpers.odeint(f, y0, t, rtol=1e-10, atol=1e-12)
        for i in (1, 2):
            end = helpers.odeint(f, y0, t[[0, i]], rtol=1e-10, atol=1e-12)[-1]
            assert max_err(ys[i], end) < 1e-9


# --- options ---------------------------------------------------------------------------------


def test_max_num_steps_has_effect_adaptive(device):
    f, y0 = linear_problem(device)
    t = torch.tensor([0.0, 20.0], dtype=F64, device=device)
    helpers.odeint(f, y0, t, rtol=1e-6, atol=1e-8)
    needed = helpers.last_stats().steps_accepted_forward + helpers.last_stats().steps_rejected_forward
    assert needed > 5
    with pytest.raises(helpers.SolveError, match="max_num_steps=5"):
        helpers.odeint(f, y0, t, rtol=1e-6, atol=1e-8, options=dict(max_num_steps=5))
    st = helpers.last_stats()
    assert st.steps_accepted_forward + st.steps_rejected_forward == 5
    y = helpers.odeint(f, y0, t, rtol=1e-6, atol=1e-8, options=dict(max_num_steps=needed))
    assert torch.isfinite(y).all()


def test_max_num_steps_has_effect_fixed(device):
    f, y0 = linear_problem(device)
    t = torch.tensor([0.0, 1.0], dtype=F64, device=device)
    with pytest.raises(helpers.SolveError, match="max_num_steps=9"):
        helpers.odeint(f, y0, t, method="rk4", options=dict(step_size=0.1, max_num_steps=9))
    helpers.odeint(f, y0, t, method="rk4", options=dict(step_size=0.1, max_num_steps=10))
    assert helpers.last_stats().steps_accepted_forward == 10


@pytest.mark.parametrize("method,c2", [("dopri5", 0.2), ("bosh3", 0.5)])
def test_first_step_has_effect(device, method, c2):
    f, y0 = linear_problem(device)
    times = []

    def func(t, y):
        times.append(float(t))
        return f(t, y)

    t = torch.tensor([0.5, 3.0], dtype=F64, device=device)
    helpers.odeint(func, y0, t, method=method, options=dict(first_step=0.0123))
    # no starting-step estimate: the second evaluation is the first step's second stage
    assert times[1] == pytest.approx(0.5 + c2 * 0.0123, abs=1e-15)
    nfe_given = helpers.last_stats().nfe_forward

    times.clear()
    helpers.odeint(func, y0, t, method=method)
    assert times[1] != pytest.approx(0.5 + c2 * 0.0123)
    # a huge first step is rejected before the solver settles
    helpers.odeint(func, y0, t, method=method, options=dict(first_step=2.5))
    assert helpers.last_stats().steps_rejected_forward >= 1
    # a tiny first step costs more steps than the automatic choice
    helpers.odeint(func, y0, t, method=method, options=dict(first_step=1e-9))
    tiny = helpers.last_stats().steps_accepted_forward
    helpers.odeint(func, y0, t, method=method)
    auto = helpers.last_stats().steps_accepted_forward
    print(f"\n{method}: accepted steps with first_step=1e-9: {tiny}, automatic: {auto}; nfe with first_step=0.0123: {nfe_given}")
    assert tiny > auto


def test_step_size_option_fixed(device):
    f, y0 = linear_problem(device)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64, device=device)
    helpers.odeint(f, y0, t, method="rk4")
    assert helpers.last_stats().nfe_forward == 4 * 2  # one step per interval without step_size
    helpers.odeint(f, y0, t, method="rk4", options=dict(step_size=0.1))
    assert helpers.last_stats().nfe_forward == 4 * 10
    # 0.5 / 0.3 is not whole: each interval is cut into ceil(0.5/0.3) = 2 equal steps
    helpers.odeint(f, y0, t, method="rk4", options=dict(step_size=0.3))
    assert helpers.last_stats().steps_accepted_forward == 4


def test_safety_and_factor_options_accepted(device):
    f, y0 = linear_problem(device)
    t = torch.tensor([0.0, 5.0], dtype=F64, device=device)
    exact = f.exact(y0, t)[-1].detach()
    y = helpers.odeint(f, y0, t, rtol=1e-8, atol=1e-10, options=dict(safety=0.8, min_factor=0.3, max_factor=4.0))
    assert max_err(y[-1], exact) < 1e-8  # measured 1.6e-9


# --- direction, dtypes, shapes -----------------------------------------------------------------


@pytest.mark.parametrize("method,options,tol", [
    # measured errors: dopri5 1.2e-9, bosh3 3.5e-10, rk4 2.7e-12, midpoint 5.4e-8, euler 4.8e-4
    # (there and back: 2.2e-10, 3.0e-10, 3.6e-13, 9.3e-11, 6.6e-4)
    ("dopri5", None, 5e-9), ("bosh3", None, 2e-9), ("rk4", dict(step_size=0.01), 1e-11),
    ("midpoint", dict(step_size=0.001), 3e-7), ("euler", dict(step_size=1e-3), 3e-3),
])
def test_backward_in_time(device, method, options, tol):
    f = TimeDependentODE(dtype=F64).to(device)
    y0 = torch.tensor([1.0, -0.5], dtype=F64, device=device)
    t = torch.tensor([2.0, 1.3, 0.4, -0.5], dtype=F64, device=device)
    with torch.no_grad():
        ys = helpers.odeint(f, y0, t, method=method, options=options, rtol=1e-9, atol=1e-11)
        exact = f.exact(y0, t)
        assert ys.shape == (4, 2)
        assert max_err(ys, exact) < tol
        # there and back again returns to the start
        back = helpers.odeint(f, ys[-1], t.flip(0), method=method, options=options, rtol=1e-9, atol=1e-11)
        assert max_err(back[-1], y0) < 2 * tol


@pytest.mark.parametrize("method,options", [("dopri5", None), ("bosh3", None), ("rk4", dict(step_size=0.05))])
def test_float32(device, method, options):
    f, y0 = linear_problem(device, dtype=torch.float32)
    t = torch.linspace(0.0, 5.0, 6, dtype=torch.float32, device=device)
    ys = helpers.odeint(f, y0, t, method=method, options=options, rtol=1e-5, atol=1e-6)
    assert ys.dtype == torch.float32 and ys.device.type == device.type
    f64, y64 = linear_problem(device)
    exact = f64.exact(y64, t.double()).detach()
    err = max_err(ys.double(), exact)
    print(f"\nfloat32 {method}: max error {err:.2e}")
    # measured: dopri5 5.8e-6, bosh3 3.0e-5, rk4 1.7e-7
    assert err < {"dopri5": 3e-5, "bosh3": 1e-4, "rk4": 1e-6}[method]


def test_float32_default_tolerances(device):
    """float32 with the default (float64-sized) tolerances still finishes, accurately."""
    f, y0 = linear_problem(device, dtype=torch.float32)
    t = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float32, device=device)
    ys = helpers.odeint(f, y0, t)
    assert ys.dtype == torch.float32 and torch.isfinite(ys).all()
    f64, y64 = linear_problem(device)
    assert max_err(ys.double(), f64.exact(y64, t.double()).detach()) < 1e-5


@pytest.mark.parametrize("solver", ["odeint", "odeint_adjoint"])
def test_float32_gradients(device, solver):
    f = TimeDependentODE(dtype=torch.float32).to(device)
    f64 = TimeDependentODE(dtype=F64).to(device)
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float32, device=device, requires_grad=True)
    t = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float32, device=device, requires_grad=True)
    ys = getattr(helpers, solver)(f, y0, t, rtol=1e-6, atol=1e-7)
    ys.sum().backward()
    y64 = y0.detach().double().requires_grad_(True)
    t64 = t.detach().double().requires_grad_(True)
    f64.exact(y64, t64).sum().backward()
    for g, g64 in [(y0.grad, y64.grad), (t.grad, t64.grad), (f.a.grad, f64.a.grad), (f.b.grad, f64.b.grad)]:
        assert g.dtype == torch.float32
        assert max_err(g.double(), g64) < 1e-4 * max(1.0, g64.abs().max().item())


@pytest.mark.parametrize("method,options", [("dopri5", None), ("bosh3", None), ("rk4", dict(step_size=0.01))])
def test_batch_states_linear(device, method, options):
    f, _ = linear_problem(device)
    y0 = torch.randn(5, 2, dtype=F64).to(device)
    t = torch.linspace(0.0, 3.0, 7, dtype=F64, device=device)
    with torch.no_grad():
        ys = helpers.odeint(f, y0, t, method=method, options=options, rtol=1e-9, atol=1e-11)
        assert ys.shape == (7, 5, 2)
        assert max_err(ys, f.exact(y0, t)) < 1e-8  # measured at most 1.9e-9 (bosh3)
        # each row solved on its own gives the same trajectory (to the tolerance)
        for b in range(5):
            alone = helpers.odeint(f, y0[b], t, method=method, options=options, rtol=1e-9, atol=1e-11)
            assert max_err(ys[:, b], alone) < 1e-8  # measured at most 1.2e-9


def test_batch_states_mlp(device):
    f = MLP((3, 16, 3), dtype=F64, device=device)
    y0 = torch.randn(4, 3, dtype=F64).to(device)
    t = torch.linspace(0.0, 1.0, 5, dtype=F64, device=device)
    with torch.no_grad():
        ys = helpers.odeint(f, y0, t, rtol=1e-10, atol=1e-12)
        assert ys.shape == (5, 4, 3)
        for b in range(4):
            alone = helpers.odeint(f, y0[b:b + 1], t, rtol=1e-10, atol=1e-12)
            assert max_err(ys[:, b:b + 1], alone) < 1e-8


def test_higher_dimensional_and_scalar_states(device):
    theta = 0.7
    f = ExponentialODE(theta, dtype=F64).to(device)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64, device=device)
    with torch.no_grad():
        for shape in [(), (3,), (2, 3, 4)]:
            y0 = torch.rand(shape, dtype=F64).to(device) + 0.5
            ys = helpers.odeint(f, y0, t, rtol=1e-10, atol=1e-12)
            assert ys.shape == (3, *shape)
            assert max_err(ys, f.exact(y0, t)) < 3e-10  # measured at most 4.1e-11


@pytest.mark.parametrize("method", sorted(helpers.METHODS))
def test_first_output_is_y0_and_plain_callable(device, method):
    y0 = torch.tensor([1.0, 2.0], dtype=F64, device=device)
    t = torch.tensor([0.3, 0.8], dtype=F64, device=device)
    ys = helpers.odeint(lambda s, y: -y, y0, t, method=method, options=None if helpers.METHODS[method].adaptive else dict(step_size=1e-3))
    assert torch.equal(ys[0], y0)
    assert max_err(ys[1], y0 * math.exp(-0.5)) < 1e-3
