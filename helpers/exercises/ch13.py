"""Self-checking exercises of the chapter on fitting times (chapter 13).

- ``ch13-ex-clock``: ``clock_grads(func, z0, tau, y, offset, rate)`` returns
  ``(dL/d offset, dL/d rate)`` for observation times ``t_i = offset + rate * tau_i`` and the
  loss ``sum_i |z(t_i) - y_i|^2 / 2``, checked against autograd through
  :func:`helpers.odeint_adjoint`;
- ``ch13-ex-landing``: ``landing_grads(h0, v0, g0)`` returns the landing time of a ball
  thrown up and its three derivatives, checked against :func:`helpers.odeint_event`;
- ``ch13-q-reply``: what gradient descent on t0 does with the reply's sign.
"""
from __future__ import annotations

import torch

from ..adjoint import odeint_adjoint
from ..events import odeint_event
from ..odeint import odeint
from ._core import call, choice, compare, exercise, unpack

TIGHT = dict(rtol=1e-10, atol=1e-12)


def clock_case(seed: int):
    """A seeded linear field on R², a start, clock readings, targets, an offset and a rate."""
    g = torch.Generator().manual_seed(1300 + seed)
    A = 0.8 * torch.randn(2, 2, generator=g, dtype=torch.float64)
    A = A - A.T + 0.1 * torch.eye(2, dtype=torch.float64) * (seed - 0.5)  # mostly rotation

    def func(t, z):
        return z @ A.T

    z0 = torch.randn(2, generator=g, dtype=torch.float64)
    tau = torch.sort(2 * torch.rand(4, generator=g, dtype=torch.float64) - 1).values
    y = torch.randn(4, 2, generator=g, dtype=torch.float64)
    offset = 2.0 + float(torch.rand((), generator=g, dtype=torch.float64))
    rate = 0.8 + 0.4 * float(torch.rand((), generator=g, dtype=torch.float64))
    where = (f"case {seed + 1} (a linear field on R², 4 readings in [-1, 1], "
             f"offset {offset:.3f}, rate {rate:.3f})")
    return func, z0, tau, y, offset, rate, where


def clock_reference(func, z0, tau, y, offset, rate):
    """(dL/d offset, dL/d rate) by autograd through odeint_adjoint."""
    x = torch.tensor([offset, rate], dtype=torch.float64, requires_grad=True)
    t = torch.cat([torch.zeros(1, dtype=torch.float64), x[0] + x[1] * tau])
    z = odeint_adjoint(func, z0, t, **TIGHT)
    (grad,) = torch.autograd.grad(0.5 * ((z[1:] - y) ** 2).sum(), x)
    return grad[0], grad[1]


@exercise(
    "ch13-ex-clock",
    "The gradients of a clock's offset and rate",
    hints=(
        "Moving one observation time moves only the state read there: "
        "dL/dt_i = ∂L/∂z(t_i) f(z(t_i), t_i), with no adjoint.",
        "Here ∂L/∂z(t_i) is the row (z(t_i) - y_i): dL/dt_i is the sum of "
        "(z(t_i) - y_i) * f(t_i, z(t_i)).",
        "t_i = offset + rate tau_i, so dL/d offset is the sum of the dL/dt_i and "
        "dL/d rate the sum of tau_i dL/dt_i.",
    ),
    success="Both agree with autograd through helpers.odeint_adjoint.",
)
def _clock_grads(answer):
    worst = 0.0
    for seed in range(2):
        func, z0, tau, y, offset, rate, where = clock_case(seed)
        d_offset, d_rate = clock_reference(func, z0, tau, y, offset, rate)
        out = call(answer, func, z0.clone(), tau.clone(), y.clone(), offset, rate, where=where)
        got_offset, got_rate = unpack("the result (dL/d offset, dL/d rate)", out, 2, where)
        worst = max(worst, compare(
            "dL/d offset", got_offset, d_offset, where=where, tol=1e-6,
            look_at="the sum over the readings of (z(t_i) - y_i) times f at t_i."))
        worst = max(worst, compare(
            "dL/d rate", got_rate, d_rate, where=where, tol=1e-6,
            look_at="each dL/dt_i weighted by its clock reading tau_i."))
    return worst


def landing_reference(h0: float, v0: float, g0: float):
    """(t*, dt*/dh0, dt*/dv0, dt*/dg0) from helpers.odeint_event's event time and gradient."""
    p = torch.tensor([h0, v0, g0], dtype=torch.float64, requires_grad=True)

    def ballistic(t, z):
        return torch.stack([z[1], -p[2] * torch.ones_like(z[1])])

    t_star, _ = odeint_event(ballistic, p[:2], torch.tensor(0.0, dtype=torch.float64),
                             event_fn=lambda t, z: z[0], odeint_interface=odeint, **TIGHT)
    (grad,) = torch.autograd.grad(t_star, p)
    return t_star.detach(), grad[0], grad[1], grad[2]


@exercise(
    "ch13-ex-landing",
    "The landing time and its gradients",
    hints=(
        "Differentiate h(t*(p); p) = 0: the change of h at the fixed time t* plus "
        "v(t*) dt*/dp is zero.",
        "So dt*/dp = -(∂h(t*)/∂p) / v* with v* = v0 - g0 t*, the velocity at the "
        "landing (negative).",
        "∂h(t*)/∂p at fixed t*: 1 for h0, t* for v0, and -t*²/2 for g0; t* is the "
        "larger root of h0 + v0 t - g0 t²/2.",
    ),
    success="t* and its three derivatives agree with helpers.odeint_event.",
)
def _event_grad(answer):
    worst = 0.0
    g = torch.Generator().manual_seed(1313)
    for case in range(2):
        h0 = 0.5 + 1.5 * float(torch.rand((), generator=g, dtype=torch.float64))
        v0 = -1.0 + 5.0 * float(torch.rand((), generator=g, dtype=torch.float64))
        g0 = 5.0 + 7.0 * float(torch.rand((), generator=g, dtype=torch.float64))
        where = f"case {case + 1} (h0 = {h0:.3f}, v0 = {v0:.3f}, g0 = {g0:.3f})"
        ref = landing_reference(h0, v0, g0)
        out = call(answer, h0, v0, g0, where=where)
        got = unpack("the result (t*, dt*/dh0, dt*/dv0, dt*/dg0)", out, 4, where)
        notes = (
            "the larger root of h0 + v0 t - g0 t²/2 = 0.",
            "-(∂h/∂h0) / v*, with v* the landing velocity.",
            "-(∂h(t*)/∂v0) / v*, where ∂h(t*)/∂v0 = t*.",
            "-(∂h(t*)/∂g0) / v*, where ∂h(t*)/∂g0 = -t*²/2.",
        )
        for name, value, expected, note in zip(
                ("t*", "dt*/dh0", "dt*/dv0", "dt*/dg0"), got, ref, notes):
            worst = max(worst, compare(name, value, expected, where=where, tol=1e-7,
                                       look_at=note))
    return worst


choice(
    "ch13-q-reply",
    "Gradient descent on t0 with the reply's sign",
    options={
        "a": "it converges to the same minimum, only more slowly",
        "b": "every step raises the loss by about η (dL/dt0)², so it moves away",
        "c": "it converges: the sign matters for t1 but not for t0",
        "d": "it stays put: the reply's value is zero near a minimum",
    },
    right="c242145f90a94f23",
    wrong_notes={
        "a": "the reply's value is not smaller than the right one: compare their signs.",
        "c": "a step along +dL/dt0 changes L by about +η (dL/dt0)² for any time.",
        "d": "the reply's value is zero only where the right gradient is zero.",
    },
    hints=(
        "The reply's value is the right dL/dt0 times a number: which one?",
        "To first order L(t0 + s) - L(t0) = s dL/dt0; take s = η times the reply's value.",
        "With the reply's sign the step is +η dL/dt0, so L changes by +η (dL/dt0)².",
    ),
    success="The flipped sign turns descent into ascent: each step raises the loss.",
)
