"""An adaptive solve as one compiled ``while_loop``: the accept/reject decisions stay in the graph.

The eager loop of :func:`helpers.solve.integrate` reads each step's error ratio into Python to
decide whether to accept it (one synchronisation and one entry into compiled code per step, the
cost that dominated the compiled mode's adaptive solves). Here the same decisions are written
with tensors: the step is accepted where ``ratio <= 1``, the next step size is the same
controller formula, requested times the step passed are filled in by the same dense output, all
inside ``torch``'s ``while_loop``, so a whole solve is one call of compiled code.

It takes the solves that need no gradient through the loop (both solves of the adjoint) and the
plain options only (no callbacks, ``step_t``/``jump_t``, custom norm). When the loop stops
without reaching the end (step size underflow, ``max_num_steps``, a non-finite state), the solve
is run again eagerly, which raises the eager loop's own error, with its diagnosis.

Introduced in the chapter "Training a Neural ODE with the adjoint" (the compiled mode).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .runge_kutta import interpolate
from .steppers import _take_step, _while_loop


def adaptive_loop_body(field_of: Callable, tableau, rtol: float, atol: float, error_numel: Optional[int],
                       direction: float, eps: float, min_step: float, max_step: float, safety: float,
                       min_factor: float, max_factor: float, max_num_steps: int) -> Callable:
    """The function to compile: ``loop(func, extra, t, t64, y0, f0, h_abs) -> (ys, counts)``.

    ``t`` (the requested times, in their dtype) and ``t64`` (the same in float64, for the
    decisions, as the eager loop takes them in Python floats), ``y0`` and ``f0 = func(t[0], y0)``
    and the first step size ``h_abs`` (float64). ``field_of(func, extra)`` gives the field to
    step. Returns the states at ``t`` and ``counts = [evaluations, accepted, rejected, reached]``
    (``reached`` is 1 when the solve got to the end).

    Used in the chapter "Training a Neural ODE with the adjoint" (the compiled mode).
    """
    while_loop = _while_loop()
    exponent = -1.0 / (tableau.error_order + 1)
    dense = tableau.dense is not None
    stage_nfe = tableau.stages - 1  # the first stage is f0, known

    def loop(func, extra, t, t64, y0, f0, h_abs):
        field = field_of(func, extra)
        n_t = t.shape[0]
        last_index = torch.full((), n_t - 1, dtype=torch.int64, device=y0.device)
        ys = torch.cat([y0.unsqueeze(0), torch.zeros((n_t - 1,) + tuple(y0.shape), dtype=y0.dtype,
                                                     device=y0.device)])
        index = torch.arange(n_t, device=y0.device)
        broadcast = (n_t,) + (1,) * y0.dim()
        zero = torch.zeros((), dtype=torch.int64, device=y0.device)

        def going(t_now, t_now_f, y, f0, h_abs, ys, next_out, counts):
            return (next_out < n_t) & (counts[4] == 0)

        def attempt(t_now, t_now_f, y, f0, h_abs, ys, next_out, counts):
            h_abs = h_abs.clamp(min_step, max_step)
            underflow = h_abs <= 4 * eps * t_now_f.abs().clamp(min=1.0)
            exhausted = counts[1] + counts[2] >= max_num_steps
            # the step ends exactly on the target: the last time (dense output) or the next one
            target = last_index if dense else next_out
            # index_select, not t[target]: a tensor index would read target into Python
            t_target = t.index_select(0, target.reshape(1)).squeeze(0)
            t_target_f = t64.index_select(0, target.reshape(1)).squeeze(0)
            last = direction * (t_now_f + direction * h_abs - t_target_f) >= -4 * eps * t_target_f.abs().clamp(min=1.0)
            h_f = torch.where(last, t_target_f - t_now_f, direction * h_abs)
            h = torch.where(last, t_target - t_now, h_f.to(t.dtype))
            y_new, ks, ratio = _take_step(field, tableau, rtol, atol, error_numel, t_now, y, h, f0)
            ratio = ratio.to(torch.float64)
            finite = torch.isfinite(ratio)
            accept = finite & ((ratio <= 1.0) | (h_f.abs() <= min_step)) & ~underflow & ~exhausted
            t_new_f = torch.where(last, t_target_f, t_now_f + h_f)
            # the requested times this step reached: exact at the target, else the dense output
            reached = accept & (index >= next_out) & (direction * (t64 - t_new_f) <= 0)
            if dense:
                theta = ((t - t_now) / h).reshape(broadcast)
                value = interpolate(tableau, y, y_new, ks, h, theta)
                value = torch.where(((index == target) & last).reshape(broadcast), y_new.unsqueeze(0), value)
            else:
                value = y_new.unsqueeze(0).expand_as(ys)
            ys = torch.where(reached.reshape(broadcast), value, ys)
            next_out = next_out + reached.sum()
            t_now = torch.where(accept, torch.where(last, t_target, t_now + h), t_now)
            t_now_f = torch.where(accept, t_new_f, t_now_f)
            y = torch.where(accept, y_new, y)
            f0 = torch.where(accept, ks[-1], f0)
            factor = torch.where(ratio == 0, max_factor, safety * ratio.clamp(min=1e-300) ** exponent)
            factor = factor.clamp(min_factor, max_factor)
            factor = torch.where(ratio > 1.0, factor.clamp(max=1.0), factor)
            h_abs = h_f.abs() * torch.where(finite, factor, torch.full_like(factor, min_factor))
            stopped = underflow | exhausted
            counts = counts + torch.stack([
                torch.where(stopped, zero, zero + stage_nfe),
                accept.long(),
                (~accept & ~stopped).long(),
                zero,
                stopped.long(),
            ])
            return t_now, t_now_f, y, f0, h_abs, ys, next_out, counts

        counts = torch.zeros(5, dtype=torch.int64, device=y0.device)
        # the carried values must not alias the loop's other inputs (t): copies
        start = (t[0].clone(), t64[0].clone(), y0.clone(), f0.clone(), h_abs.clone(), ys,
                 torch.ones((), dtype=torch.int64, device=y0.device), counts)
        out = while_loop(going, attempt, start)
        ys, next_out, counts = out[5], out[6], out[7]
        counts = counts.clone()
        counts[3] = (next_out >= n_t).long()
        return ys, counts[:4]
    return loop


def _settings_key(settings, direction: float, eps: float) -> tuple:
    """What the compiled loop depends on besides the method and tolerances (part of its cache key)."""
    return (direction, eps, settings.min_step, settings.max_step, settings.safety, settings.min_factor,
            settings.max_factor, settings.max_num_steps)


def _loop_arguments(settings, direction: float, eps: float) -> dict:
    """The keyword arguments of :func:`adaptive_loop_body` taken from ``settings``."""
    return dict(direction=direction, eps=eps, min_step=settings.min_step,
                max_step=settings.max_step if math.isfinite(settings.max_step) else 1e300,
                safety=settings.safety, min_factor=settings.min_factor, max_factor=settings.max_factor,
                max_num_steps=settings.max_num_steps)


def solve_in_one_call(stepper, settings, t: torch.Tensor, y0: torch.Tensor, f0: torch.Tensor, h_abs: float,
                      direction: float, counter) -> Optional[torch.Tensor]:
    """Run the adaptive solve of ``stepper`` (a compiled one with a ``loop_spec``) in one call.

    ``f0`` and ``h_abs`` are the first evaluation and step size, found eagerly as the eager loop
    finds them. **Returns:** the states at ``t``, with the evaluations and steps added to
    ``counter``; or ``None`` (nothing added) if the loop stopped before the end, so that the
    caller's eager loop can take over and raise its error.

    Used in the chapter "Training a Neural ODE with the adjoint" (the compiled mode).
    """
    from .steppers import _compiled

    spec = stepper.loop_spec
    eps = torch.finfo(y0.dtype).eps
    tableau = stepper.tableau
    key = (("adaptive loop", tableau.name, spec["rtol"], spec["atol"], spec["error_numel"]) + spec["key"]
           + _settings_key(settings, direction, eps) + (spec["mode"], spec["device_type"]))
    body = adaptive_loop_body(spec["field_of"], tableau, spec["rtol"], spec["atol"], spec["error_numel"],
                              **_loop_arguments(settings, direction, eps))
    fn = _compiled(key, body, spec["mode"], spec["device_type"])
    extra = stepper.args[1] if len(stepper.args) > 1 else ()
    h0 = torch.tensor(h_abs, dtype=torch.float64, device=y0.device)
    ys, counts = fn(stepper.args[0], extra, t, t.to(torch.float64), y0, f0, h0)
    nfe, accepted, rejected, reached = counts.tolist()  # the one synchronisation of the solve
    if not reached:
        return None
    counter.nfe += nfe
    counter.accepted += accepted
    counter.rejected += rejected
    return ys
