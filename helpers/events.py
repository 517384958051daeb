"""Solving until an event: the time at which ``event_fn(t, y)`` first reaches zero, and its gradient.

``odeint(func, y0, t, event_fn=g)`` (and ``odeint_adjoint``) integrate from ``t[0]`` in the
direction of ``t[1]`` until ``g(t, y(t))`` changes sign, and return ``(t*, solution)`` with
``solution = [y0, y(t*)]``, as torchdiffeq does. :func:`odeint_event` is torchdiffeq's
interface to the same thing. A vector-valued ``g`` ends the solve when any entry changes sign.

How the event is found: every accepted step is checked for a sign change of ``g`` at its end;
the step that brackets the change is searched by bisection on its dense output (the method's
own continuous extension; for dopri8, which has none, a shorter step of dopri8 itself; for
fixed-step methods a cubic Hermite polynomial, or the chord with ``options['interp']="linear"``)
to the resolution of the time's floating-point type.

The gradient of t* comes from the implicit function theorem. t* is defined by
``g(t*, z(t*; p)) = 0`` for every parameter ``p`` (of ``func``, of ``g``, ``y0`` or ``t0``), so

    dt*/dp = -(∂g/∂p + ∂g/∂z · ∂z(t*)/∂p) / (∂g/∂t + ∂g/∂z · f(t*, z(t*)))

where ``∂z(t*)/∂p`` is taken at the fixed time t*, and the state at the event moves by
``f(t*, z(t*)) dt*/dp`` on top of that. Both are added here as first-order terms whose value
is zero, so the forward numbers are exactly those the solver found.

Introduced in the chapter "Gradients with respect to t0, t1 and the observation times".
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .errors import SolveError
from .runge_kutta import interpolate, rk_step
from .stats import StepCounter
from .steppers import EagerStepper


class _EventCrossed(Exception):
    """Raised by :class:`_EventWatch` to leave the integration loop at the bracketing step."""

    def __init__(self, t, h, y, y_new, ks, nfe):
        super().__init__("event")
        self.t, self.h, self.y, self.y_new, self.ks, self.nfe = t, h, y, y_new, ks, nfe


class _EventWatch:
    """A stepper that checks ``g`` at the end of each accepted step and stops at a sign change."""

    def __init__(self, stepper, event_fn: Callable, adaptive: bool, sign0: torch.Tensor):
        self.stepper, self.event_fn, self.adaptive, self.sign0 = stepper, event_fn, adaptive, sign0

    def __call__(self, t, y, h, k1=None):
        y_new, ks, ratio, nfe = self.stepper(t, y, h, k1) if k1 is not None else self.stepper(t, y, h)
        accepted = not self.adaptive or (math.isfinite(float(ratio)) and float(ratio) <= 1.0)
        if accepted and _crossed(self.event_fn, t + h, y_new, self.sign0):
            raise _EventCrossed(t, h, y, y_new, ks, nfe)
        return y_new, ks, ratio, nfe


def _combined(event_fn: Callable, sign0: torch.Tensor) -> Callable:
    """One scalar that starts positive and reaches zero when the first entry of ``g`` does."""
    def g(t, y):
        return (event_fn(t, y).reshape(-1) * sign0).min()
    return g


def _crossed(event_fn, t, y, sign0) -> bool:
    with torch.no_grad():
        return bool((event_fn(t, y).reshape(-1) * sign0 <= 0).any())


def _dense(tableau, func, t, h, y, y_new, ks, counter, interp="cubic"):
    """The state inside the bracketing step as a function of the fraction θ of the step.

    ``interp``: for fixed-step methods, ``"cubic"`` (Hermite, from the derivatives at both
    ends) or ``"linear"`` (the chord), as ``options['interp']`` says. An adaptive method
    without a continuous extension (dopri8) takes a shorter step of its own instead.
    """
    if tableau.dense is not None:
        return lambda theta: interpolate(tableau, y, y_new, ks, h, theta)
    if tableau.adaptive:
        # an adaptive method without a continuous extension (dopri8): one step of the method
        # itself, of length θh, from the step's start (shorter than the step it accepted)
        def shorter_step(theta):
            y_theta, _, _, nfe = rk_step(func, tableau, t, y, theta * h, ks[0])
            counter.nfe += nfe
            return y_theta
        return shorter_step
    if interp == "linear":
        return lambda theta: y + theta * (y_new - y)
    # no continuous extension of its own (fixed-step methods): a cubic Hermite polynomial
    f0, f1 = ks[0], func(t + h, y_new)
    counter.nfe += 1
    dy = y_new - y

    def hermite(theta):
        inner = (1 - 2 * theta) * dy + (theta - 1) * h * f0 + theta * h * f1
        return y + theta * dy + theta * (theta - 1) * inner
    return hermite


def _bisect(g, t, h, state_at, eps) -> float:
    """The fraction θ of the step at which ``g`` reaches zero, to the time's resolution."""
    lo, hi = 0.0, 1.0
    scale = abs(float(h.detach() if isinstance(h, torch.Tensor) else h))
    t_f = float(t.detach()) if isinstance(t, torch.Tensor) else float(t)
    resolution = 4 * eps * max(abs(t_f), abs(t_f + scale), 1.0)
    with torch.no_grad():
        while (hi - lo) * scale > resolution and hi - lo > 1e-15:
            mid = 0.5 * (lo + hi)
            if float(g(t + mid * h, state_at(mid))) > 0:
                lo = mid
            else:
                hi = mid
    return hi


def solve_until_event(func, y0, t, event_fn, settings, counter: StepCounter, integrate):
    """Integrate from ``t[0]`` toward ``t[1]`` until ``event_fn`` changes sign.

    **Arguments:**

    - `func`, `y0`, `t`: as :func:`helpers.odeint` checked them (only ``t[0]`` and the
      direction from ``t[0]`` to ``t[1]`` are used).
    - `event_fn`: ``g(t, y)``, a tensor; the solve ends where an entry first changes sign.
    - `settings`: the solver settings; fixed-step methods need ``options['step_size']``.
    - `counter`: receives the work done.
    - `integrate`: the integration loop (:func:`helpers.solve.integrate`).

    **Returns:** ``(t_event, y_event, sign0)``: the event time (a tensor that moves with
    ``t[0]``: the time elapsed since ``t[0]`` is what the solve found), the state there,
    differentiable along the solver's path for that elapsed time (the implicit-function terms
    are added by :func:`attach_event_gradient`), and the signs of ``event_fn`` at the start.

    **Raises:** :class:`helpers.SolveError` when no sign change occurs within the solver's
    ``max_num_steps``; ``ValueError`` when ``g`` is already zero at ``t[0]`` or a fixed-step
    method has no ``step_size``.

    Not shown in the book; it extends the chapter "Gradients with respect to t0, t1 and the observation times".
    """
    tableau = settings.tableau
    direction = 1.0 if float(t[1].detach()) > float(t[0].detach()) else -1.0
    with torch.no_grad():
        g0 = event_fn(t[0], y0)
    if not isinstance(g0, torch.Tensor):
        raise TypeError(f"event_fn(t, y) must return a tensor, got {type(g0).__name__}")
    sign0 = torch.sign(g0.detach()).reshape(-1)
    if bool((sign0 == 0).any()):
        raise ValueError("event_fn is already zero at t[0]: the event condition holds at the start")
    if tableau.adaptive:
        start = float(t[0].detach())
        far = start + direction * 1e6 * max(1.0, abs(start))
    else:
        if settings.step_size is None:
            raise ValueError(f"event_fn with the fixed-step method {tableau.name!r} needs options['step_size']")
        steps = settings.max_num_steps or 20_000
        far = float(t[0].detach()) + direction * settings.step_size * steps
    span = torch.stack([t[0], t[0].detach() * 0 + far])
    watch = _EventWatch(EagerStepper(func, tableau, settings.rtol, settings.atol), event_fn,
                        tableau.adaptive, sign0)
    try:
        integrate(func, y0, span, settings, counter, stepper=watch)
    except _EventCrossed as found:
        counter.nfe += found.nfe
        counter.accepted += 1
        g = _combined(event_fn, sign0)
        state_at = _dense(tableau, func, found.t, found.h, found.y, found.y_new, found.ks, counter,
                          settings.interp)
        theta = _bisect(g, found.t, found.h, state_at, torch.finfo(t.dtype).eps)
        return found.t + theta * found.h, state_at(theta), sign0
    except SolveError as error:
        raise SolveError(f"no event: event_fn did not change sign before the solver stopped ({error})") from None
    raise SolveError(f"no event: event_fn did not change sign between t={float(t[0].detach()):.6g} and t={far:.6g}")


def attach_event_gradient(func, event_fn, t_event, y_event, sign0=None):
    """Add the implicit-function-theorem terms to the event time and the state there.

    **Arguments:**

    - `func`, `event_fn`: the vector field and the event function.
    - `t_event`: the event time found (its value is kept), moving with ``t0`` one for one.
    - `y_event`: the state at ``t_event``, differentiable for a fixed time elapsed since ``t0``.
    - `sign0`: the signs of ``event_fn`` at the start (``None``: taken from ``y_event``'s side).

    **Returns:** ``(t_event, y_event)`` with the same values, whose gradients now include how
    the event time moves: ``dt*/dp`` and ``f(t*, z*) dt*/dp``.

    Not shown in the book; it extends the chapter "Gradients with respect to t0, t1 and the observation times".
    """
    t_d, y_d = t_event.detach(), y_event.detach()
    with torch.no_grad():
        f_d = func(t_d, y_d)
    if sign0 is None:
        sign0 = torch.ones(1, dtype=t_d.dtype, device=t_d.device)
    g = _combined(event_fn, sign0)
    with torch.enable_grad():
        tt, yy = t_d.clone().requires_grad_(True), y_d.clone().requires_grad_(True)
        g_tt = g(tt, yy)
        dg_dt, dg_dy = torch.autograd.grad(g_tt, (tt, yy), allow_unused=True)
    dg_dt = torch.zeros_like(t_d) if dg_dt is None else dg_dt
    rate = dg_dt + (torch.zeros_like(y_d) if dg_dy is None else dg_dy * f_d).sum()
    if float(rate) == 0:
        raise SolveError("event_fn touches zero without crossing it (dg/dt = 0 at the event): its time has no gradient")
    # With s the time elapsed since t0, g(t0 + s*, Y(s*)) = 0 and dY/ds = f; so
    # ds*/dp = -(d g(t0 + s, Y(s))/dp at fixed s) / rate, and t_event already carries dt0/dp.
    live = g(t_d, y_event) + (t_event - t_d) * dg_dt  # depends on y0, θ, t0 and event_fn's own tensors
    shift = -(live - live.detach()) / rate.detach()
    return t_event + shift, y_event + f_d * shift


def odeint_event(func, y0, t0, *, event_fn, reverse_time=False, odeint_interface=None, **kwargs):
    """Solve from ``t0`` until ``event_fn(t, y)`` reaches zero; torchdiffeq's ``odeint_event``.

    **Arguments:**

    - `func`, `y0`: the vector field and the initial state, as for :func:`helpers.odeint`.
    - `t0`: the initial time, a tensor (0-d or with one element).
    - `event_fn`: ``g(t, y)`` returning a tensor; the solve ends where an entry first changes
      sign.
    - `reverse_time`: integrate toward decreasing t.
    - `odeint_interface`: :func:`helpers.odeint` (default) or :func:`helpers.odeint_adjoint`.
    - `kwargs`: passed on (``method``, ``rtol``, ``atol``, ``options``, ...).

    **Returns:** ``(t_event, solution)``, ``solution`` holding ``y0`` and the state at the
    event; both carry gradients with respect to ``y0``, ``t0``, the parameters of ``func`` and
    the tensors of ``event_fn`` (implicit function theorem, see :mod:`helpers.events`).

    Not shown in the book; it extends the chapter "Gradients with respect to t0, t1 and the observation times".
    """
    if odeint_interface is None:
        from .odeint import odeint as odeint_interface
    if not isinstance(t0, torch.Tensor):
        raise TypeError(f"t0 must be a tensor, got {type(t0).__name__}")
    t0 = t0.reshape(-1)[:1]
    t = torch.cat([t0, t0.detach() + (-1.0 if reverse_time else 1.0)])
    return odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)


def odeint_until_event(func, y0, t, event_fn, settings, counter, integrate, adjoint_solve=None):
    """What ``odeint`` and ``odeint_adjoint`` return when given ``event_fn``.

    **Arguments:** as :func:`solve_until_event`, and `adjoint_solve`: ``None`` to keep the
    state found along the solver's recorded path (backpropagation), or a function
    ``(y0, t) -> ys`` that solves again to the event time with the adjoint, so no graph is kept.

    **Returns:** ``(t_event, solution)`` with ``solution = stack([y0, y(t_event)])``; the event
    time has ``t``'s dtype.

    Not shown in the book; it extends the chapter "Gradients with respect to t0, t1 and the observation times".
    """
    if adjoint_solve is None:
        t_event, y_event, sign0 = solve_until_event(func, y0, t, event_fn, settings, counter, integrate)
    else:
        with torch.no_grad():
            t_event, _, sign0 = solve_until_event(func, y0, t, event_fn, settings, counter, integrate)
        elapsed = (t_event - t[0]).detach()
        y_event = adjoint_solve(y0, torch.stack([t[0], t[0] + elapsed]))[-1]
        t_event = t[0] + elapsed
    t_event, y_event = attach_event_gradient(func, event_fn, t_event, y_event, sign0)
    return t_event.to(t.dtype), torch.stack([y0, y_event])
