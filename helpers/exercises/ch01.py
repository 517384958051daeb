"""Self-checking exercises of the chapter "Neural ODEs and the forward pass".

- ``ch1-ex-rk-step``: ``rk_step_by_hand(func, t, z, h, tableau)``, one step of any explicit
  Runge–Kutta tableau, checked against the closed form of one step on a linear field and
  against a one-step :func:`helpers.odeint` solve on fields that depend on ``t`` or take a
  batch;
- ``ch1-ex-order``: ``estimate_order(func, z0, T, method, h)``, the order of a fixed-step
  method from three solves without the exact solution, checked against the order measured with
  the closed form ``z(T) = e^{AT} z0`` of a linear field.
"""
from __future__ import annotations

import math

import torch

from ..models import MLP
from ..odeint import odeint
from ..problems import LinearODE, TimeDependentODE
from ..tableaus import EULER, HEUN3, MIDPOINT, RK4
from ._core import call, compare, exercise

F64 = torch.float64


def _matrix(g: torch.Generator, d: int) -> torch.Tensor:
    """A random d x d matrix with a slight decay, so that the solutions stay of order one."""
    return 0.8 * torch.randn(d, d, generator=g, dtype=F64) - 0.3 * torch.eye(d, dtype=F64)


def _one_step_closed_form(A: torch.Tensor, z: torch.Tensor, h: float, tableau) -> torch.Tensor:
    """One step of ``tableau`` on ż = A z, in closed form: ``R(hA) z`` with the stability
    polynomial ``R(x) = 1 + Σ_k (bᵀ a^{k-1} 1) x^k`` of an explicit method."""
    s = tableau.stages
    a = torch.zeros(s, s, dtype=F64)
    for i, row in enumerate(tableau.a):
        for j, value in enumerate(row):
            a[i, j] = value
    b = torch.tensor(tableau.b, dtype=F64)
    R = torch.eye(len(z), dtype=F64)
    weights, power = torch.ones(s, dtype=F64), torch.eye(len(z), dtype=F64)
    for k in range(1, s + 1):
        power = power @ (h * A)
        R = R + (b @ weights) * power
        weights = a @ weights
    return R @ z


def _odeint_one_step(func, z, t: float, h: float, tableau) -> torch.Tensor:
    times = torch.tensor([t, t + h], dtype=F64)
    with torch.no_grad():
        return odeint(func, z, times, method=tableau.name, options=dict(step_size=h))[-1]


def _step_cases():
    """(field, t, z, h, tableau, reference, where, look_at): linear fields with the closed
    form first, then a field that depends on t and a batch, with helpers.odeint."""
    g = torch.Generator().manual_seed(6100)
    def rounded(lo, hi):
        return round(lo + (hi - lo) * float(torch.rand((), generator=g, dtype=F64)), 2)

    look_linear = ("stage i is f at t + c_i h and z + h Σ_j a_ij k_j (the k_j found so far); "
                   "the new state is z + h Σ_i b_i k_i.")
    for n, tableau in enumerate((EULER, MIDPOINT, HEUN3, RK4)):
        d = 2 + n % 2
        A = _matrix(g, d)
        z = torch.randn(d, generator=g, dtype=F64)
        t, h = rounded(-1.0, 1.0), rounded(0.1, 0.5)
        where = (f"case {n + 1} ({tableau.name}, ż = A z with d = {d}, "
                 f"t = {t:.2f}, h = {h:.2f})")
        yield (LinearODE(A), t, z, h, tableau, _one_step_closed_form(A, z, h, tableau), where,
               look_linear)
    for n, tableau in enumerate((HEUN3, RK4)):
        a, b = rounded(-0.8, 0.3), rounded(0.5, 1.5)
        field = TimeDependentODE(a=a, b=b, dtype=F64)
        z = torch.randn(3, generator=g, dtype=F64)
        t, h = rounded(-1.0, 1.0), rounded(0.2, 0.6)
        where = (f"case {n + 5} ({tableau.name}, ż = (a + b cos t) z with a = {a:.2f}, "
                 f"b = {b:.2f}, t = {t:.2f}, h = {h:.2f})")
        yield (field, t, z, h, tableau, _odeint_one_step(field, z, t, h, tableau), where,
               "the fields that ignore t passed; this one depends on t: stage i is "
               "evaluated at the time t + c_i h.")
    torch.manual_seed(6101)
    field = MLP((2, 6, 2), dtype=F64)
    z = torch.randn(4, 2, generator=g, dtype=F64)
    t, h = rounded(-1.0, 1.0), rounded(0.1, 0.5)
    where = f"case 7 (rk4, MLP(2, 6, 2), a batch of 4 states as rows, t = {t:.2f}, h = {h:.2f})"
    yield (field, t, z, h, RK4, _odeint_one_step(field, z, t, h, RK4), where,
           "z is a batch with one state per row: treat it as a whole tensor, as func does.")


@exercise(
    "ch1-ex-rk-step",
    "One step of any explicit Runge–Kutta tableau",
    hints=(
        "Keep a list of the stages found so far; stage i needs only the earlier ones, "
        "because a is strictly lower triangular: row i of tableau.a has i entries.",
        "Stage i is func(t + c[i] * h, z + h * Σ_j a[i][j] * k[j]); for the first stage the "
        "sum is empty and the state is z itself.",
        "After the loop the new state is z + h * Σ_i b[i] * k[i]. Use only arithmetic that "
        "works for any shape of z, so that a batch of rows goes through unchanged.",
    ),
    success="Your step matches the closed form R(hA) z on linear fields and helpers.odeint "
            "on a field that depends on t and on a batch.",
)
def _rk_step(answer):
    worst = 0.0
    for field, t, z, h, tableau, expected, where, look_at in _step_cases():
        out = call(answer, field, torch.tensor(t, dtype=F64), z.clone(), h, tableau,
                   where=where)
        worst = max(worst, compare("the new state z_{n+1}", out, expected, where=where,
                                   tol=1e-10, look_at=look_at))
    return worst


# method, step h, seed of the linear field. In cases 3 and 4 the measured order is 2.84 and
# 3.75, not yet the nominal 3 and 4 at these steps: an answer that returns the method's nominal
# order fails there. In every case the estimate from three solves is within 0.6% of the measured
# order (with the norm 2, max or sum alike); from the steps 2h, h, h/2 instead it is off by 6%
# in cases 3 and 4.
ORDER_CASES = (("euler", 0.01, 2), ("midpoint", 0.04, 7), ("heun3", 0.08, 3), ("rk4", 0.1, 3))


def _order_cases():
    for n, (method, h, seed) in enumerate(ORDER_CASES):
        g = torch.Generator().manual_seed(6200 + seed)
        d = int(torch.randint(2, 4, (), generator=g))
        A = _matrix(g, d)
        z0 = torch.randn(d, generator=g, dtype=F64)
        T = round(1.0 + float(torch.rand((), generator=g, dtype=F64)), 2)
        where = f"case {n + 1} ({method}, ż = A z with d = {d}, T = {T:.2f}, h = {h})"
        yield LinearODE(A), A, z0, T, method, h, where


def _measured_order(A, z0, T, method, h) -> torch.Tensor:
    """log2 of err(h) / err(h/2), the errors measured against the closed form e^{AT} z0."""
    exact = torch.linalg.matrix_exp(A * T) @ z0
    errors = []
    for step in (h, h / 2):
        with torch.no_grad():
            z_T = odeint(LinearODE(A), z0, torch.tensor([0.0, T], dtype=F64), method=method,
                         options=dict(step_size=step))[-1]
        errors.append((z_T - exact).norm().item())
    return torch.tensor(math.log2(errors[0] / errors[1]), dtype=F64)


@exercise(
    "ch1-ex-order",
    "The order of a method from three solves, without the exact solution",
    hints=(
        "Write the error of the solution with step h as C h^p. What is the difference of the "
        "solutions with steps h and h/2, and that of the solutions with h/2 and h/4?",
        "z_h - z_{h/2} ≈ C h^p (1 - 2^{-p}) and z_{h/2} - z_{h/4} ≈ C (h/2)^p (1 - 2^{-p}): "
        "their ratio is 2^p.",
        "Solve with odeint(func, z0, torch.tensor([0.0, T]), method=method, "
        "options=dict(step_size=h)) for h, h/2 and h/4, and return math.log2 of the ratio of "
        "the norms of the two differences.",
    ),
    success="Your estimate agrees with the order measured against the closed form e^{AT} z0, "
            "to the accuracy the step sizes allow.",
)
def _order(answer):
    worst = 0.0
    for func, A, z0, T, method, h, where in _order_cases():
        expected = _measured_order(A, z0, T, method, h)
        out = call(answer, func, z0.clone(), T, method, h, where=where)
        worst = max(worst, compare(
            "your order estimate", out, expected, where=where, tol=0.02,
            look_at="the ratio of successive differences is 2^p: take log2 of "
                    "|z_h - z_{h/2}| / |z_{h/2} - z_{h/4}|, larger difference on top."))
    return worst
