"""Self-checking exercises of the chapter "Choosing λ: the adjoint equation"."""
from __future__ import annotations

import torch

from ..odeint import odeint
from ..problems import ExponentialODE, TimeDependentODE
from ._core import call, compare, exercise, unpack

TOL = dict(rtol=1e-11, atol=1e-12)


def _case(seed: int):
    g = torch.Generator().manual_seed(1000 + seed)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand((), generator=g, dtype=torch.float64).item()  # noqa: E731
    d = int(torch.randint(1, 4, (), generator=g))
    z0 = torch.randn(d, generator=g, dtype=torch.float64)
    t0 = u(-0.5, 0.8)
    t1 = t0 + u(0.5, 1.5)
    return g, u, z0, t0, t1


def _autograd(field, z0, t0, t1, wrt, target=None):
    """dL/d(wrt) and dL/dz(t0) for L = ||z(t1) - target||²/2 (target 0 by default), by
    autograd through helpers.odeint."""
    z0 = z0.clone().requires_grad_(True)
    t = torch.tensor([t0, t1], dtype=torch.float64)
    z1 = odeint(field, z0, t, **TOL)[-1]
    target = torch.zeros_like(z1) if target is None else target
    grads = torch.autograd.grad(0.5 * ((z1 - target) ** 2).sum(), (*wrt, z0))
    return [x.detach() for x in grads]


@exercise(
    "ch4-ex-closed-form",
    "dL/dθ and λ(t0) for ż = θz and a loss with a target, in closed form",
    hints=(
        "Solve ż = θz forward and the adjoint equation λ̇ = -λ ∂f/∂z backward from "
        "λ(t1) = ∂L/∂z(t1) = (z(t1) - y)ᵀ; both are exponentials.",
        "λ(t) z(t) does not depend on t, and ∂f/∂θ = z, so the integrand of (ch4-gradient) "
        "is the constant λ(t1) z(t1).",
        "λ(t0) = λ(t1) e^{θ(t1 - t0)}, and dL/dθ = (t1 - t0) (z(t1) - y)ᵀ z(t1), with "
        "z(t1) = z0 e^{θ(t1 - t0)}.",
    ),
    success="dL/dθ and λ(t0) agree with autograd through the solver.",
)
def _closed_form(answer):
    worst = 0.0
    for seed in range(4):
        g, u, z0, t0, t1 = _case(seed)
        theta = u(-0.8, 0.8)
        where = (f"case {seed + 1} (θ = {theta:.3f}, t0 = {t0:.3f}, t1 = {t1:.3f}, "
                 f"d = {z0.numel()})")
        y = torch.randn(z0.shape, generator=g, dtype=torch.float64)
        field = ExponentialODE(theta, dtype=torch.float64)
        dtheta, lam0 = _autograd(field, z0, t0, t1, [field.theta], target=y)
        out = call(answer, theta, z0.clone(), y.clone(), t0, t1, where=where)
        got_theta, got_lam0 = unpack("the result (dL/dθ, λ(t0))", out, 2, where)
        worst = max(worst, compare(
            "dL/dθ", got_theta, dtheta, where=where, tol=1e-8,
            look_at="the integrand λ z is constant: λ(t1) z(t1) with λ(t1) = (z(t1) - y)ᵀ, "
                    "times the length t1 - t0."))
        worst = max(worst, compare(
            "λ(t0)", got_lam0, lam0, where=where, tol=1e-8, vector=True,
            look_at="λ(t0) = dL/dz(t0); start from λ(t1) = (z(t1) - y)ᵀ and solve the "
                    "adjoint equation backward."))
    return worst


@exercise(
    "ch4-ex-timedep",
    "dL/da and dL/db for ż = (a + b cos t) z",
    hints=(
        "∂f/∂z = (a + b cos t) I, so λ solves a scalar linear ODE times λ(t1) = z(t1)ᵀ.",
        "As for ż = θz, λ(t) z(t) = ||z(t1)||² is constant in t.",
        "∂f/∂a = z and ∂f/∂b = z cos t; integrate the constant ||z(t1)||² against 1 and "
        "against cos t from t0 to t1.",
    ),
    success="dL/da and dL/db agree with autograd through the solver.",
)
def _timedep(answer):
    worst = 0.0
    for seed in range(4):
        g, u, z0, t0, t1 = _case(10 + seed)
        a, b = u(-0.6, 0.3), u(-1.0, 1.0)
        where = (f"case {seed + 1} (a = {a:.3f}, b = {b:.3f}, t0 = {t0:.3f}, "
                 f"t1 = {t1:.3f}, d = {z0.numel()})")
        field = TimeDependentODE(a=a, b=b, dtype=torch.float64)
        da, db, _ = _autograd(field, z0, t0, t1, [field.a, field.b])
        out = call(answer, a, b, z0.clone(), t0, t1, where=where)
        got_a, got_b = unpack("the result (dL/da, dL/db)", out, 2, where)
        worst = max(worst, compare(
            "dL/da", got_a, da, where=where, tol=1e-8,
            look_at="∂f/∂a = z; the integrand λ z is constant."))
        worst = max(worst, compare(
            "dL/db", got_b, db, where=where, tol=1e-8,
            look_at="∂f/∂b = z cos t: what is the integral of cos t from t0 to t1?"))
    return worst
