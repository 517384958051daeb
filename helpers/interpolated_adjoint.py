"""The interpolating adjoint: the backward solve reads z(t) from the forward solve's dense output.

``odeint_adjoint(..., adjoint_options=dict(reconstruct="interpolate"))``. The forward solve keeps
every accepted step as a polynomial (:mod:`helpers.dense_output`); the backward solve integrates
only ``[λ, a_θ]``,

    dλ/dt   = -λ ∂f/∂z(z(t), t)
    da_θ/dt = -λ ∂f/∂θ(z(t), t)

with z(t) taken from that polynomial instead of being integrated backward. Backward
integration of z is unstable where the forward problem is strongly dissipative (the errors of
the reconstruction grow like the forward solution decays); reading z from the forward steps
has no such growth. The price is memory: O(steps) states instead of O(requested times).
The time gradients are the boundary form of :mod:`helpers.adjoint`. dopri8 has no continuous
extension: the cubic Hermite polynomial over its long steps limits the gradient (on a 3×3 linear
system at rtol 1e-10, dL/dA was 1.4e-5 relative off, against 2.4e-12 by backsolve); prefer dopri5.

Introduced in the chapter "Choosing a gradient method, by measurement".
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .dense_output import DenseOutput, RecordingStepper
from .solve import CALLBACKS, integrate
from .stats import StepCounter
from .steppers import EagerStepper, resolve_compile
from .tuple_state import TupleFunc

RECONSTRUCTIONS = ("backsolve", "interpolate")


class InterpolatedAdjointDynamics:
    """The backward solve's right-hand side on the flat state ``[λ, a_θ]``, z from dense output.

    **Arguments:**

    - `func`: the forward vector field ``func(t, z)``.
    - `dense`: the forward solution, a :class:`helpers.dense_output.DenseOutput`.
    - `params`: the parameters θ whose gradient accumulates in ``a_θ``.

    Each call costs one evaluation of ``func`` at z(t) and one vector–Jacobian product.

    Introduced in the chapter "Choosing a gradient method, by measurement".
    """

    def __init__(self, func: Callable, dense: DenseOutput, params: Sequence[torch.Tensor]):
        self.field, self.dense, self.params = func, dense, tuple(params)
        self.shape = dense.coefficients.shape[2:]
        self.n = self.shape.numel()

    def __call__(self, t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        lam = state[:self.n].view(self.shape)
        with torch.enable_grad():
            z = self.dense(t).detach().requires_grad_(True)
            f = self.field(t, z)
            inputs = (z,) + self.params
            if f.requires_grad:
                vjps = torch.autograd.grad(f, inputs, grad_outputs=-lam, allow_unused=True)
            else:
                vjps = (None,) * len(inputs)
        parts = [torch.zeros(x.numel(), dtype=state.dtype, device=state.device) if g is None
                 else g.reshape(-1).to(state.dtype) for x, g in zip(inputs, vjps)]
        return torch.cat(parts)


class _InterpolatedAdjointFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, func, settings, adjoint_settings, stats, y0, t, guard, *params):
        counter = StepCounter()
        try:
            with torch.no_grad():
                recorder = RecordingStepper(
                    EagerStepper(func, settings.tableau, settings.rtol, settings.atol), settings.tableau)
                forward_func = func if guard is None else guard.watch(func)
                ys = integrate(forward_func, y0, t, settings, counter, stepper=recorder)
                dense = recorder.finish(func, counter)
        finally:
            counter.add_to(stats)
        stats.dense_steps += dense.steps
        stats.dense_bytes += dense.nbytes
        ctx.func, ctx.adjoint_settings, ctx.stats, ctx.params, ctx.dense = (
            func, adjoint_settings, stats, params, dense)
        ctx.adjoint_options = {"norm": adjoint_settings.norm, "reconstruct": "interpolate"}
        ctx.save_for_backward(t, ys)
        return ys

    @staticmethod
    def backward(ctx, grad_ys):
        if torch.is_grad_enabled():
            raise ValueError("odeint_adjoint does not give higher-order gradients (create_graph=True was "
                             "asked for); use helpers.odeint, which backpropagates through the solver")
        t, ys = (x.detach() for x in ctx.saved_tensors)
        func, settings, stats, params = ctx.func, ctx.adjoint_settings, ctx.stats, ctx.params
        if ctx.adjoint_options.get("norm") is not settings.norm:
            raise ValueError("ys.grad_fn.adjoint_options['norm'] cannot be replaced with "
                             "adjoint_options['reconstruct']='interpolate'; give adjoint_options['norm'] "
                             "('seminorm' or 'full') to odeint_adjoint instead")
        need_y0, need_t = ctx.needs_input_grad[4], ctx.needs_input_grad[5]
        dynamics = InterpolatedAdjointDynamics(func, ctx.dense, params)
        n = dynamics.n
        error_numel = n if settings.norm == "seminorm" else None
        counter = StepCounter()
        lam = grad_ys[-1]
        a_theta = torch.zeros(sum(p.numel() for p in params), dtype=ys.dtype, device=ys.device)
        grad_t = torch.zeros(len(t), dtype=t.dtype, device=t.device) if need_t else None
        try:
            with torch.no_grad():
                if need_t:
                    for i in range(1, len(t)):
                        grad_t[i] = (grad_ys[i] * func(t[i], ys[i])).sum()
                        counter.nfe += 1
                for j in range(len(t) - 1, 0, -1):
                    state = torch.cat([lam.reshape(-1), a_theta])
                    state = integrate(dynamics, state, t[j - 1:j + 1].flip(0), settings, counter,
                                      error_numel=error_numel, check_first=False)[-1]
                    lam = state[:n].view(ys.shape[1:]) + grad_ys[j - 1]
                    a_theta = state[n:]
                if need_t:
                    # λ(t0) without the direct term ∂L/∂z(t0): z(t0) = y0 does not move with t0
                    grad_t[0] = -((lam - grad_ys[0]) * func(t[0], ys[0])).sum()
                    counter.nfe += 1
        finally:
            counter.add_to(stats, backward=True)
        grad_params, offset = [], 0
        for p in params:
            grad_params.append(a_theta[offset:offset + p.numel()].view(p.shape).to(p.dtype))
            offset += p.numel()
        return (None, None, None, None, lam if need_y0 else None, grad_t, None, *grad_params)


def check_reconstruct(reconstruct, settings, adjoint_settings, compiled, event_fn, func) -> None:
    """Refuse what the interpolating adjoint does not support, naming the option.

    Not shown in the book; it extends the chapter "Choosing a gradient method, by measurement".
    """
    if not isinstance(reconstruct, str) or reconstruct not in RECONSTRUCTIONS:
        raise ValueError(f"adjoint_options['reconstruct'] must be one of {list(RECONSTRUCTIONS)}, "
                         f"got {reconstruct!r}")
    what = "adjoint_options['reconstruct']='interpolate' cannot be combined with "
    if resolve_compile(compiled) is not None:
        raise ValueError(what + "compiled=True (yet); use compiled=False")
    if event_fn is not None:
        raise ValueError(what + "event_fn; use the default reconstruct='backsolve'")
    if adjoint_settings.checkpoints:
        raise ValueError(what + "adjoint_options['checkpoints'] (the dense output already stores every step)")
    for name, s in (("options", settings), ("adjoint_options", adjoint_settings)):
        if s.per_sample_steps:
            raise ValueError(what + f"{name}['per_sample_steps']")
    if settings.perturb or settings.jump_t:
        raise ValueError(what + "options['perturb'] or options['jump_t'] (the recorded forward steps need "
                         "the plain stepper); use step_t to make steps end on a time")
    if callable(settings.norm):
        raise ValueError(what + "a callable options['norm']")
    if callable(adjoint_settings.norm):
        raise ValueError(what + "a callable adjoint_options['norm']; use 'seminorm' or 'full'")
    owner = func.base if isinstance(func, TupleFunc) else func
    adjoint_callbacks = [name + "_adjoint" for name in CALLBACKS if callable(getattr(owner, name + "_adjoint", None))]
    if adjoint_callbacks:
        raise ValueError(what + f"func's {adjoint_callbacks} (its backward state is [λ, a_θ], without z)")


def interpolated_adjoint(func, y0, t, settings, adjoint_settings, params, stats, guard) -> torch.Tensor:
    """``odeint_adjoint``'s solve with ``adjoint_options['reconstruct']="interpolate"``.

    **Arguments:** the checked, flat ``func``, ``y0`` and ``t`` (at least two times), the forward
    and backward :class:`helpers.options.SolverSettings`, the adjoint ``params``, the ``stats``
    to fill in (``stats.dense_steps`` and ``stats.dense_bytes`` get the number of stored steps
    and their memory) and the untracked-gradient ``guard`` (or ``None``).

    **Returns:** the states at the times ``t``, with gradients to ``y0``, ``t`` and ``params``.

    Introduced in the chapter "Choosing a gradient method, by measurement".
    """
    return _InterpolatedAdjointFunction.apply(func, settings, adjoint_settings, stats, y0, t, guard, *params)
