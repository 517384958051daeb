"""Self-checking exercises of the chapter "What is the adjoint?": the adjoint of a linear
system in closed form, and the right-hand side of the variational equation whose pairing with
λ is conserved.

- ``ch8-ex-linear-lambda``: ``lam_at(A, lam1, t, t1)`` returns λ(t) for ż = Az with
  λ(t1) = ``lam1``, checked against autograd through :func:`helpers.odeint`;
- ``ch8-ex-variational``: ``var_rhs(func, t, z, dz)`` returns (∂f/∂z) δz, checked
  against the Jacobian built by ``torch.func.jacrev``, then used to solve the variational
  equation, whose pairing with λ must be the same at t1 as at t0.
"""
from __future__ import annotations

import torch
from torch.func import jacrev

from ..odeint import odeint
from ..problems import LinearODE
from ._core import Wrong, call, compare, exercise
from .reference import small_field

TOL = dict(rtol=1e-10, atol=1e-12)
PAIR_TOL = dict(rtol=1e-8, atol=1e-10)  # the joint solve calls the reader's function


def _linear_case(seed: int):
    g = torch.Generator().manual_seed(8000 + seed)
    d = int(torch.randint(2, 5, (), generator=g))
    A = torch.randn(d, d, generator=g, dtype=torch.float64) / d ** 0.5
    lam1 = torch.randn(d, generator=g, dtype=torch.float64)
    t1 = 0.5 + 1.5 * float(torch.rand((), generator=g, dtype=torch.float64))
    t = t1 - (0.3 + 1.5 * float(torch.rand((), generator=g, dtype=torch.float64)))
    return A, lam1, t, t1, f"case {seed + 1} (d = {d}, t = {t:.3f}, t1 = {t1:.3f})"


@exercise(
    "ch8-ex-linear-lambda",
    "λ(t) for ż = Az in closed form",
    hints=(
        "The adjoint equation for f = Az is λ̇ = -λ A, a linear ODE for the row λ, solved "
        "backward from λ(t1).",
        "Its solution is a matrix exponential of A times the elapsed time t1 - t; mind on "
        "which side the row λ(t1) multiplies it.",
        "λ is a row: λ(t) = λ(t1) e^{A(t1 - t)}, which in code is lam1 @ "
        "torch.linalg.matrix_exp(A * (t1 - t)).",
    ),
    success="λ(t) agrees with dL/dz(t) by autograd through helpers.odeint.",
)
def _linear_lambda(answer):
    worst = 0.0
    for seed in range(3):
        A, lam1, t, t1, where = _linear_case(seed)
        # λ(t) = dL/dz(t) for the linear loss L = λ(t1) z(t1), by autograd through a solve
        zt = torch.ones_like(lam1).requires_grad_(True)  # λ does not depend on z
        field = LinearODE(A)
        z1 = odeint(field, zt, torch.tensor([t, t1], dtype=torch.float64), **TOL)[-1]
        (want,) = torch.autograd.grad((lam1 * z1).sum(), zt)
        got = call(answer, A.clone(), lam1.clone(), t, t1, where=where)
        worst = max(worst, compare(
            "λ(t)", got, want, where=where, tol=1e-8, vector=True,
            look_at="λ̇ = -λ A is solved backward from t1; the row λ(t1) multiplies the "
                    "matrix exponential from the left, and the exponent grows with t1 - t."))
    return worst


def _variational_cases():
    """The chapter's kind of field: a time-dependent MLP on R², at a random time and state."""
    for seed in range(2):
        func, z0, t0, t1, loss_fn, where = small_field(10 + seed)
        g = torch.Generator().manual_seed(8100 + seed)
        dz0 = torch.randn(z0.shape, generator=g, dtype=torch.float64)
        where = (f"case {seed + 1}" + where[where.index(" ("):]).replace(", 20 steps", "")
        yield func, z0, dz0, t0, t1, loss_fn, where


@exercise(
    "ch8-ex-variational",
    "The right-hand side of the variational equation, and the conserved pairing",
    hints=(
        "The variational equation is δż = J(t) δz with J = ∂f/∂z at (t, z): a Jacobian "
        "times a column, not a row times a Jacobian.",
        "That product is a Jacobian-vector product: forward mode, torch.func.jvp, with z as "
        "the primal and dz as the tangent, t held fixed.",
        "torch.func.jvp(lambda x: func(t, x), (z,), (dz,))[1] is (∂f/∂z) δz; no Jacobian "
        "needs to be built.",
    ),
    success="(∂f/∂z) δz matches the Jacobian from torch.func, and the pairing λ δz is the "
            "same at t1 as at t0.",
)
def _variational(answer):
    worst = 0.0
    for func, z0, dz0, t0, t1, loss_fn, where in _variational_cases():
        t = torch.tensor(0.5 * (t0 + t1), dtype=torch.float64)
        with torch.no_grad():
            J = jacrev(lambda x: func(t, x))(z0)
        got = call(answer, func, t.clone(), z0.clone(), dz0.clone(), where=where,
                   name="var_rhs")
        worst = max(worst, compare(
            "(∂f/∂z) δz", got, J @ dz0, where=where, tol=1e-9, vector=True,
            look_at="the Jacobian acts on the column δz from the left (a JVP), with no minus "
                    "sign; λ ∂f/∂z, a row times the Jacobian, is the other product."))

        # solve z and δz together with the reader's right-hand side
        def joint(s, y, func=func):
            d = y.shape[0] // 2
            dz = torch.as_tensor(answer(func, s, y[:d], y[d:]), dtype=y.dtype)
            return torch.cat([func(s, y[:d]), dz.reshape(-1)])

        times = torch.tensor([t0, t1], dtype=torch.float64)
        try:
            with torch.no_grad():
                y1 = odeint(joint, torch.cat([z0, dz0]), times, **PAIR_TOL)[-1]
        except Wrong:
            raise
        except Exception as exc:
            raise Wrong("var_rhs inside a solve", f"failed: {type(exc).__name__}: "
                        f"{str(exc)[:100]}", where,
                        "it must take t as a 0-d tensor and return a tensor shaped like z.") \
                from None
        d = z0.numel()
        z1 = y1[:d].clone().requires_grad_(True)
        (lam1,) = torch.autograd.grad(loss_fn(z1), z1)
        at_t1 = (lam1 * y1[d:]).sum()
        # λ(t0) = dL/dz0 by autograd through the forward solve
        zz = z0.clone().requires_grad_(True)
        (lam0,) = torch.autograd.grad(loss_fn(odeint(func, zz, times, **PAIR_TOL)[-1]), zz)
        at_t0 = (lam0 * dz0).sum()
        worst = max(worst, compare(
            "the pairing λ(t1) δz(t1)", at_t1, at_t0, where=where, tol=1e-6,
            look_at="with a right (∂f/∂z) δz the pairing cannot change; check that it "
                    "works on any z and t, not only on one point."))
    return worst
