"""Reference answers for the reader's own adjoint (chapters 5, 6 and 9), from helpers.odeint_adjoint.

The progression ends with a fixed-step adjoint written by the reader. Every step of it is
compared with :func:`helpers.odeint_adjoint` on the same number of RK4 steps. A right answer
agrees to rounding when it evaluates the field at float64 times, and to about 1e-8 when it
builds its times in float32 (``torch.tensor(t)`` under a float32 default); a sign error, a
missing term or another integrator (Euler) is off by 1e-3 or more. The tolerance is 1e-7.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..adjoint import odeint_adjoint
from ..models import MLP
from ._core import Wrong, compare, rk4_adjoint

STEPS = 20


class DrivenMLP(nn.Module):
    """``f(t, z) = MLP(z) + w sin 2t``: a field that depends on t, so that λ f is not
    conserved along the solution and dL/dt0 differs from -dL/dt1."""

    def __init__(self):
        super().__init__()
        self.net = MLP((2, 8, 2), dtype=torch.float64)
        self.w = nn.Parameter(torch.randn(2, dtype=torch.float64))

    def forward(self, t, z):
        return self.net(t, z) + self.w * torch.sin(2 * t)


def small_field(seed: int):
    """A seeded time-dependent field on R², a start, an interval and a loss: one test case."""
    g = torch.Generator().manual_seed(4000 + seed)
    torch.manual_seed(4000 + seed)
    func = DrivenMLP()
    z0 = torch.randn(2, generator=g, dtype=torch.float64)
    target = torch.randn(2, generator=g, dtype=torch.float64)
    t0 = float(torch.rand((), generator=g, dtype=torch.float64)) - 0.5
    t1 = t0 + 0.8 + float(torch.rand((), generator=g, dtype=torch.float64))

    def loss_fn(z1):
        return 0.5 * ((z1 - target) ** 2).sum()

    where = f"case {seed + 1} (MLP(2, 8, 2) + w sin 2t, t0 = {t0:.3f}, t1 = {t1:.3f}, {STEPS} steps)"
    return func, z0, t0, t1, loss_fn, where


def adjoint_grads(func, z0, t0: float, t1: float, loss_fn: Callable, steps: int = STEPS):
    """``(dL/dz0, [dL/dθ], dL/dt0, dL/dt1)`` by helpers.odeint_adjoint with ``steps`` RK4 steps."""
    z0 = z0.detach().clone().requires_grad_(True)
    t = torch.tensor([t0, t1], dtype=torch.float64, requires_grad=True)
    params = [p for p in func.parameters() if p.requires_grad]
    z = odeint_adjoint(func, z0, t, method="rk4",
                       options=dict(step_size=(t1 - t0) / steps))
    grads = torch.autograd.grad(loss_fn(z[-1]), [z0, *params, t])
    dz0, *dtheta, dt = (g.detach() for g in grads)
    return dz0, dtheta, dt[0], dt[1]


def adjoint_reference(make_dynamics: Callable, what: str, look_at: str) -> float:
    """Run :func:`rk4_adjoint` with ``make_dynamics(func)`` as its backward right-hand side and
    compare dL/dz0 and dL/dθ with :func:`adjoint_grads`; return the largest relative error."""
    worst = 0.0
    for seed in range(2):
        func, z0, t0, t1, loss_fn, where = small_field(seed)
        dz0, dtheta, _, _ = adjoint_grads(func, z0, t0, t1, loss_fn)
        try:
            got_z0, got_theta = rk4_adjoint(func, z0, t0, t1, loss_fn, STEPS, make_dynamics(func))
        except Wrong:
            raise
        except Exception as exc:
            raise Wrong(what, f"failed: {type(exc).__name__}: {str(exc)[:120]}", where,
                        look_at) from None
        worst = max(worst, compare(f"λ(t0) = dL/dz0 from {what}", got_z0, dz0, where=where,
                                   tol=1e-7, look_at=look_at))
        for k, (got, want) in enumerate(zip(got_theta, dtheta)):
            worst = max(worst, compare(f"dL/dθ (parameter {k}) from {what}", got, want,
                                       where=where, tol=1e-7, look_at=look_at))
    return worst
