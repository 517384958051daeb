"""torchdiffeq's other explicit Runge–Kutta methods as tableaus: heun2, heun3 (fixed step),
adaptive_heun, fehlberg2 and dopri8 (adaptive).

Each is checked three ways: its order conditions (every rooted tree up to its order, and one
failing beyond), its observed order (error against step count on the damped spiral, whose exact
solution is a matrix exponential), for adaptive pairs the embedded formula's too, and its values
against torchdiffeq's (fixed methods to rounding, adaptive ones to tolerance). torchdiffeq's own
coefficient tables are read only here, to check ours numerically.
"""
from __future__ import annotations

import math

import pytest
import torch

import helpers
from helpers import METHODS, ButcherTableau
from helpers.problems import LinearODE, TimeDependentODE
from helpers.runge_kutta import rk_step
from test_tableaus import satisfied_order, trees, tree_residual

torchdiffeq = pytest.importorskip("torchdiffeq")

F64 = torch.float64
NEW = ["heun2", "heun3", "adaptive_heun", "fehlberg2", "dopri8"]
SPIRAL_A = [[-0.1, 1.0], [-1.0, -0.1]]


def spiral(device=None):
    f = LinearODE(torch.tensor(SPIRAL_A, dtype=F64, device=device))
    return f, torch.tensor([1.0, 0.0], dtype=F64, device=device)


def embedded(tab: ButcherTableau) -> ButcherTableau:
    """The embedded formula b_hat = b - b_err of an adaptive pair, as a method of its own."""
    b_hat = tuple(b - e for b, e in zip(tab.b, tab.b_err))
    return ButcherTableau(name=f"{tab.name} embedded", c=tab.c, a=tab.a, b=b_hat, order=tab.error_order)


# --- the coefficients ------------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW)
def test_order_conditions(name):
    tab = METHODS[name]
    got = satisfied_order(tab.b, tab, max_order=tab.order + 1)
    assert got == tab.order
    if tab.adaptive:
        assert satisfied_order(embedded(tab).b, tab, max_order=tab.error_order + 1) == tab.error_order


def test_dopri8_order_conditions_hold_to_rounding():
    """The published rational coefficients approximate the exact ones to about 18 digits."""
    tab = METHODS["dopri8"]
    worst = max(abs(tree_residual(tab.b, tab, t)) for p in range(1, 9) for t in trees(p))
    print(f"\ndopri8: largest residual over the {sum(len(trees(p)) for p in range(1, 9))} trees "
          f"up to order 8: {worst:.1e}")
    assert worst < 1e-14
    assert max(abs(tree_residual(tab.b, tab, t)) for t in trees(9)) > 1e-7  # not ninth order


def _td_tableau(module, name):
    import importlib
    return getattr(importlib.import_module(f"torchdiffeq._impl.{module}"), name)


@pytest.mark.parametrize("name,module,attr", [
    ("adaptive_heun", "adaptive_heun", "_ADAPTIVE_HEUN_TABLEAU"),
    ("fehlberg2", "fehlberg2", "_FEHLBERG2_TABLEAU"),
    ("dopri8", "dopri8", "_DOPRI8_TABLEAU"),
])
def test_coefficients_match_torchdiffeq(name, module, attr):
    """torchdiffeq stores stages 2.. (alpha, beta) and weights over its stages plus f at the end."""
    tab = METHODS[name]
    td = _td_tableau(module, attr)
    n = len(td.alpha)  # torchdiffeq's stages after the first
    assert torch.allclose(td.alpha.double(), torch.tensor(tab.c[1:n + 1], dtype=F64), rtol=0, atol=1e-15)
    for i, row in enumerate(td.beta):
        assert torch.allclose(row.double(), torch.tensor(tab.a[i + 1], dtype=F64), rtol=0, atol=1e-14)
    sol = torch.tensor(tab.b[:len(td.c_sol)], dtype=F64)
    assert torch.allclose(td.c_sol.double(), sol, rtol=0, atol=1e-15)
    err = torch.tensor(tab.b_err[:len(td.c_error)], dtype=F64)
    # the sign of an error estimate is a convention (adaptive_heun's is b_hat - b there)
    assert min((td.c_error.double() - err).abs().max(), (td.c_error.double() + err).abs().max()) < 1e-15


# --- observed orders --------------------------------------------------------------------------


def _fixed_solve(f, y0, tab, T, n):
    y, h = y0, T / n
    for j in range(n):
        y = rk_step(f, tab, torch.tensor(j * h, dtype=F64), y, h)[0]
    return y


def _slope(ns, errors) -> float:
    """Least-squares slope of -log(error) against log(n): the observed order."""
    xs = [math.log(n) for n in ns]
    ys = [-math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


# (problem, final time, step counts) for each formula: a range where the error is well above
# rounding and the leading error term dominates. On the linear spiral dopri8 looks ninth order
# (its linear-problem error term is unusually small), so it is measured on the time-dependent one.
STEPS = {
    ("heun2", "b"): ("spiral", 2.0, (32, 64, 128)), ("heun3", "b"): ("spiral", 2.0, (32, 64, 128)),
    ("adaptive_heun", "b"): ("spiral", 2.0, (32, 64, 128)),
    ("adaptive_heun", "embedded"): ("spiral", 2.0, (32, 64, 128)),
    ("fehlberg2", "b"): ("spiral", 2.0, (64, 128, 256)),
    ("fehlberg2", "embedded"): ("spiral", 2.0, (256, 512, 1024)),
    ("dopri8", "b"): ("time-dependent", 5.0, (16, 24, 32)),
    ("dopri8", "embedded"): ("time-dependent", 5.0, (16, 24, 32)),
}


@pytest.mark.parametrize("name,which", sorted(STEPS))
def test_observed_order(name, which):
    """Error at the final time against the number of equal steps: the slope is the order (±0.3)."""
    problem, T, ns = STEPS[name, which]
    if problem == "spiral":
        f, y0 = spiral()
    else:
        f, y0 = TimeDependentODE(dtype=F64), torch.tensor([1.0, -0.5], dtype=F64)
    tab = METHODS[name]
    method = tab if which == "b" else embedded(tab)
    with torch.no_grad():
        exact = f.exact(y0, torch.tensor([0.0, T], dtype=F64))[-1]
        errors = [(_fixed_solve(f, y0, method, T, n) - exact).norm().item() for n in ns]
    slope = _slope(ns, errors)
    print(f"\n{name} ({which}): steps {ns}, errors {['%.1e' % e for e in errors]}, observed order {slope:.2f}")
    assert abs(slope - method.order) < 0.3


# --- against torchdiffeq ----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["heun2", "heun3"])
def test_fixed_methods_match_torchdiffeq(device, method):
    f = TimeDependentODE(dtype=F64).to(device)
    y0 = torch.tensor([1.0, -0.5], dtype=F64, device=device)
    t = torch.linspace(0.0, 2.0, 11, dtype=F64, device=device)
    with torch.no_grad():
        ys = helpers.odeint(f, y0, t, method=method, options=dict(step_size=0.05))
        ys_d = torchdiffeq.odeint(f, y0, t, method=method, options=dict(step_size=0.05))
        exact = f.exact(y0, t)
    assert helpers.last_stats().steps_accepted_forward == 40
    assert (ys - ys_d).abs().max().item() < 1e-13
    assert (ys - exact).abs().max().item() < (1e-3 if method == "heun2" else 1e-5)


@pytest.mark.parametrize("method,tol", [("adaptive_heun", 1e-5), ("fehlberg2", 1e-6), ("dopri8", 1e-9)])
def test_adaptive_methods_match_torchdiffeq(device, method, tol):
    """Both solve to about the tolerance; their difference is no more than their errors."""
    f = TimeDependentODE(dtype=F64).to(device)
    y0 = torch.tensor([1.0, -0.5], dtype=F64, device=device)
    t = torch.linspace(0.0, 3.0, 7, dtype=F64, device=device)
    with torch.no_grad():
        ys = helpers.odeint(f, y0, t, method=method, rtol=tol, atol=tol)
        ys_d = torchdiffeq.odeint(f, y0, t, method=method, rtol=tol, atol=tol)
        exact = f.exact(y0, t)
    err = (ys - exact).abs().max().item()
    err_d = (ys_d - exact).abs().max().item()
    diff = (ys - ys_d).abs().max().item()
    print(f"\n{method} tol {tol:g}: error {err:.1e} (torchdiffeq {err_d:.1e}), difference {diff:.1e}")
    # fehlberg2's first-order estimate is nearly second order, so it underestimates the error
    assert err < (1000 if method == "fehlberg2" else 10) * tol
    assert diff < 1.5 * (err + err_d)


def test_dopri8_steps_onto_every_output(device):
    """No dense output: each requested time ends a step, so every output has eighth order."""
    f, y0 = spiral(device)
    t = torch.linspace(0.0, 5.0, 26, dtype=F64, device=device)
    with torch.no_grad():
        ys = helpers.odeint(f, y0, t, method="dopri8", rtol=1e-10, atol=1e-10)
        exact = f.exact(y0, t)
    assert helpers.last_stats().steps_accepted_forward >= 25
    assert (ys - exact).abs().max().item() < 1e-9


@pytest.mark.parametrize("method", ["adaptive_heun", "fehlberg2", "dopri8"])
def test_gradients_with_respect_to_t_and_y0(method):
    f, _ = spiral()
    y0 = torch.tensor([1.0, 0.0], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.7, 1.5], dtype=F64, requires_grad=True)
    helpers.odeint(f, y0, t, method=method, rtol=1e-7, atol=1e-9).sum().backward()
    y0_e = y0.detach().clone().requires_grad_(True)
    t_e = t.detach().clone().requires_grad_(True)
    f.exact(y0_e, t_e).sum().backward()
    tol = 1e-4 if method != "dopri8" else 1e-7
    assert (y0.grad - y0_e.grad).abs().max().item() < tol
    assert (t.grad - t_e.grad).abs().max().item() < tol
