"""The integration loops: fixed steps and adaptive steps with error control.

:func:`integrate` takes checked inputs (see :mod:`helpers.odeint`) and returns the state at every
requested time. Both loops work forward or backward in time and keep the requested times in the
autograd graph, so backpropagating through them gives gradients with respect to ``t``.

Host–device synchronisation: the fixed-step loop never waits on the device inside the loop (one
finiteness check at the end); the adaptive loop reads one number per step, the error ratio that
decides whether the step is accepted. Both check the first evaluation of ``func`` once. Only
when something has gone wrong (a non-finite error ratio, a non-finite fixed-step result) do they
synchronise more, to say whether ``func`` itself returned nan or inf at a finite state.

The options of torchdiffeq (``min_step``, ``max_step``, a callable ``norm``, ``step_t``,
``jump_t``, ``grid_constructor``, ``perturb``) and its step callbacks on ``func`` are handled
here; see :func:`helpers.odeint` for what each does.

Introduced in the chapter "Neural ODEs and the forward pass".
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, List, Optional

import torch

from .errors import SolveError
from .options import SolverSettings
from .runge_kutta import add_step, interpolate, nudge
from .stats import StepCounter
from .steppers import EagerStepper
from .tuple_state import TupleFunc


def integrate(
    func: Callable,
    y0: torch.Tensor,
    t: torch.Tensor,
    settings: SolverSettings,
    counter: StepCounter,
    error_numel: Optional[int] = None,
    check_first: bool = True,
    stepper: Optional[Callable] = None,
) -> torch.Tensor:
    """Solve ``dy/dt = func(t, y)``, ``y(t[0]) = y0``, and return ``y`` at every time in ``t``.

    **Arguments:**

    - `func`, `y0`, `t`: checked by the caller; ``t`` is strictly monotonic.
    - `settings`: the method, tolerances and options.
    - `counter`: receives the number of evaluations and of accepted and rejected steps.
    - `error_numel`: if given, only the first ``error_numel`` entries of the flattened state
      enter the error norm (the seminorm of the adjoint solve).
    - `check_first`: check the shape, dtype and device of the first evaluation of ``func``.
    - `stepper`: takes each step (see :mod:`helpers.steppers`); by default an
      :class:`~helpers.steppers.EagerStepper` of ``func``. ``func`` itself is still called for the
      first evaluation and the initial step size.

    **Returns:** a tensor of shape ``(len(t), *y0.shape)``.

    Used in the chapter "Neural ODEs and the forward pass".
    """
    if settings.per_sample_steps:
        from .per_sample import integrate_per_sample  # one step size per sample of a batch
        return integrate_per_sample(func, y0, t, settings, counter, check_first=check_first)
    callbacks = _callbacks(func)
    if callbacks and not settings.tableau.adaptive:
        callbacks = _fixed_step_callbacks(callbacks, "_adjoint" if _is_backward(func) else "")
    norm = settings.norm if callable(settings.norm) else None
    wrapped = _checked(func, y0) if check_first else func
    if stepper is None:
        stepper = EagerStepper(wrapped, settings.tableau, settings.rtol, settings.atol, error_numel, norm)
    else:
        eager_only = [name for name, given in (("norm", norm is not None), ("perturb", settings.perturb),
                                               ("jump_t", bool(settings.jump_t))) if given]
        if eager_only:
            raise ValueError(f"options {eager_only} need the default eager stepper: compiled=True and event_fn "
                             "do not support them (yet)")
        if check_first and not settings.tableau.adaptive:
            # the first evaluation happens inside the stepper: check it there, eagerly, once
            _check_output(func(t[0], y0), y0, t[0])
    if settings.tableau.adaptive:
        ys = _integrate_adaptive(wrapped, stepper, y0, t, settings, counter, error_numel, callbacks)
    else:
        ys = _integrate_fixed(stepper, y0, t, settings, counter, func=wrapped, callbacks=callbacks,
                              user_func=func)
    return ys


CALLBACKS = ("callback_step", "callback_accept_step", "callback_reject_step")


def _callbacks(func: Callable) -> dict:
    """torchdiffeq's step callbacks that ``func`` defines, each called as ``callback(t0, y0, dt)``.

    ``callback_step`` before every step attempt, ``callback_accept_step`` after a step is
    accepted and ``callback_reject_step`` after a rejection (adaptive methods only).
    In the backward solve of :func:`helpers.odeint_adjoint` the adjoint variants
    (``callback_step_adjoint``...) are called instead, with the augmented state ``[z, λ, a_θ]``.
    """
    suffix = ""
    if _is_backward(func):  # the adjoint's backward dynamics
        func, suffix = func.func, "_adjoint"
    owner = getattr(func, "user_func", func)  # a func watched by the adjoint's gradient guard
    if isinstance(owner, TupleFunc):  # a tuple-state wrapper around the user's func
        owner = owner.base
    return {name: getattr(owner, name + suffix) for name in CALLBACKS
            if callable(getattr(owner, name + suffix, None))}


def _is_backward(func: Callable) -> bool:
    return getattr(func, "func", None) is not None and hasattr(func, "split")


def _fixed_step_callbacks(callbacks: dict, suffix: str = "") -> dict:
    """A fixed-step method accepts every step: warn about the callbacks that are never called.

    As torchdiffeq: ``callback_accept_step`` and ``callback_reject_step`` are not called by
    fixed-step methods (``callback_step`` is, before each step).
    """
    unused = [name for name in CALLBACKS[1:] if name in callbacks]
    if unused:
        warnings.warn(f"func has {[name + suffix for name in unused]}, which a fixed-step method never "
                      "calls: it accepts every step; use callback_step" + suffix + ", called before each step",
                      UserWarning, stacklevel=4)
    return {name: c for name, c in callbacks.items() if name not in unused}


def _call(callbacks: dict, name: str, t0, y0, dt) -> None:
    callback = callbacks.get(name)
    if callback is not None:
        if not isinstance(dt, torch.Tensor):
            dt = torch.tensor(dt, dtype=y0.dtype, device=y0.device)
        callback(t0, y0, dt)


def _checked(func: Callable, y0: torch.Tensor) -> Callable:
    """Wrap ``func`` so that its first result is checked against ``y0``; later calls go straight through."""
    state = {"checked": False}

    def checked(t, y):
        out = func(t, y)
        if not state["checked"]:
            _check_output(out, y0, t)
            state["checked"] = True
        return out

    return checked


def _check_output(out, y0: torch.Tensor, t) -> None:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"func(t, y) must return a tensor dy/dt, got {type(out).__name__}")
    if out.shape != y0.shape:
        raise ValueError(
            f"func(t, y) returned shape {tuple(out.shape)} but y0 has shape {tuple(y0.shape)}; "
            "func must return dy/dt with the same shape as y"
        )
    if out.dtype != y0.dtype:
        raise ValueError(f"func(t, y) returned dtype {out.dtype} but y0 has dtype {y0.dtype}; they must match")
    if out.device != y0.device:
        raise ValueError(f"func(t, y) returned a tensor on {out.device} but y0 is on {y0.device}")
    _check_first_finite(out, t)


def _check_first_finite(out: torch.Tensor, t) -> None:
    """The first evaluation, at the (finite) initial state: nan or inf there is func's own doing."""
    if not bool(torch.isfinite(out).all()):
        raise SolveError(
            f"func returned a non-finite value (nan or inf) at the initial time t={float(t):.6g}, "
            "for the initial state y0 (which is finite); check func there"
        )


def _first_nonfinite(ys: torch.Tensor) -> Optional[int]:
    """One synchronisation after a fixed-step solve: the first output that is not finite, or ``None``."""
    finite = torch.isfinite(ys.reshape(len(ys), -1)).all(dim=1)
    if bool(finite.all()):
        return None
    return int((~finite).nonzero()[0])


def step_counts(times: List[float], step_size: float, eps: float) -> List[int]:
    """How many equal steps no longer than ``step_size`` each interval between ``times`` needs.

    The ratio length/step_size is formed in float64 from the times as stored (in ``t``'s dtype,
    whose spacing is ``eps``). A ratio within the rounding of the times of a whole number is that
    number: in float32 the interval from 0.1 to 0.2 is 0.10000000149..., and 0.05 cuts it into 2
    steps, not 3.

    Used in the chapter "Neural ODEs and the forward pass".
    """
    counts = []
    for a, b in zip(times[:-1], times[1:]):
        ratio = abs(b - a) / step_size
        nearest = round(ratio)
        # the times carry a relative error of eps/2 each; allow a few of those, relative to the
        # largest time (absolute spacing), plus a few float64 ulps of the ratio itself
        slack = 4 * eps * max(abs(a), abs(b)) / step_size + 8 * 2.0 ** -52 * ratio
        n = nearest if nearest >= 1 and abs(ratio - nearest) <= slack else math.ceil(ratio)
        counts.append(max(1, n))
    return counts


def _integrate_fixed(stepper, y0, t, settings: SolverSettings, counter: StepCounter,
                    func: Optional[Callable] = None, callbacks: Optional[dict] = None,
                    user_func: Optional[Callable] = None) -> torch.Tensor:
    """Equal steps of at most ``step_size`` between consecutive requested times.

    Stepping onto every requested time (rather than interpolating) keeps the method's full order
    at the outputs, and makes each step's length a function of ``t``, so gradients reach ``t``.
    With ``grid_constructor`` the steps run between the points of its grid and the requested
    times together.
    """
    callbacks = callbacks or {}
    t_list = t.tolist()
    if settings.grid_constructor is not None:
        return _integrate_on_grid(stepper, y0, t, settings, counter, callbacks, user_func)
    counts = [1] * (len(t_list) - 1) if settings.step_size is None else step_counts(
        t_list, settings.step_size, torch.finfo(t.dtype).eps)
    total = sum(counts)
    if settings.max_num_steps is not None and total > settings.max_num_steps:
        raise SolveError(
            f"step_size={settings.step_size} needs {total} steps from t={t_list[0]:.6g} to t={t_list[-1]:.6g}, "
            f"more than max_num_steps={settings.max_num_steps}; raise options['max_num_steps'] or the step size"
        )
    ys: List[torch.Tensor] = [y0]
    y = y0
    # Steps carry gradients to t only when someone asks for them; otherwise a float step size
    # lets each stage be formed with fused adds.
    t_needs_grad = t.requires_grad and torch.is_grad_enabled()
    # a compiled stepper can take several steps in one call (see helpers.steppers.CHAIN_LENGTH),
    # or, where no gradient flows through the solve, a whole interval (CompiledStepper.loop)
    chain = 0 if callbacks else getattr(stepper, "chain_length", None) or 0
    loops = chain and not torch.is_grad_enabled() and getattr(stepper, "loops", False)
    perturb = (True, True) if settings.perturb else None
    for i, n in enumerate(counts):
        start = t[i]
        h = (t[i + 1] - start) / n if t_needs_grad else (t_list[i + 1] - t_list[i]) / n
        j = 0
        while j < n:
            if loops:
                y, nfe = stepper.loop(start, y, h, n)
                j = n
            elif chain and n - j >= chain:
                times = torch.stack([start + k * h if k else start for k in range(j, j + chain)])
                y, nfe = stepper.chain(times, y, h)
                j += chain
            else:
                t_j = start + j * h if j else start
                _call(callbacks, "callback_step", t_j, y, h)
                y_prev = y
                if perturb:
                    y, _, _, nfe = stepper(t_j, y, h, perturb=perturb)
                else:
                    y, _, _, nfe = stepper(t_j, y, h)
                _call(callbacks, "callback_accept_step", t_j, y_prev, h)
                j += 1
            counter.nfe += nfe
        counter.accepted += n
        ys.append(y)
    out = torch.stack(ys)
    i = _first_nonfinite(out)
    if i is not None:
        found = None
        if func is not None:  # say whether func itself returned nan/inf at a finite state
            h = (t_list[i] - t_list[i - 1]) / counts[i - 1]
            found = _replay_fixed(func, settings.tableau, out[i - 1], t_list[i - 1], h, counts[i - 1], t)
        raise SolveError(found or (
            f"the state became non-finite (inf or nan) between t={t_list[i - 1]:.6g} and t={t_list[i]:.6g}; "
            "the step size may be too large for this problem, or its solution blows up"
        ))
    return out


def _integrate_on_grid(stepper, y0, t, settings: SolverSettings, counter: StepCounter, callbacks: dict,
                       user_func: Optional[Callable]) -> torch.Tensor:
    """Fixed steps between the points of ``grid_constructor(func, y0, t)`` and the requested times."""
    with torch.no_grad():
        grid = settings.grid_constructor(user_func, y0, t)
    if not isinstance(grid, torch.Tensor) or grid.dim() != 1 or len(grid) < 2:
        raise ValueError("options['grid_constructor'] must return a 1-D tensor of at least two times")
    g = grid.detach().tolist()
    t_list = t.tolist()
    direction = 1.0 if t_list[-1] > t_list[0] else -1.0
    if g[0] != t_list[0] or g[-1] != t_list[-1]:
        raise ValueError(f"options['grid_constructor'] must return a grid from t[0]={t_list[0]!r} to "
                         f"t[-1]={t_list[-1]!r}, got one from {g[0]!r} to {g[-1]!r}")
    if any(direction * (b - a) <= 0 for a, b in zip(g[:-1], g[1:])):
        raise ValueError("options['grid_constructor'] must return strictly monotonic times, in t's direction")
    # the grid's points strictly inside each interval between requested times
    inner = [[x for x in g if direction * (x - a) > 0 and direction * (b - x) > 0]
             for a, b in zip(t_list[:-1], t_list[1:])]
    total = sum(len(x) + 1 for x in inner)
    if settings.max_num_steps is not None and total > settings.max_num_steps:
        raise SolveError(f"the grid needs {total} steps, more than max_num_steps={settings.max_num_steps}")
    t_needs_grad = t.requires_grad and torch.is_grad_enabled()
    perturb = (True, True) if settings.perturb else None
    ys: List[torch.Tensor] = [y0]
    y = y0
    for i, points in enumerate(inner):
        ends = [torch.tensor(x, dtype=t.dtype, device=t.device) for x in points] + [t[i + 1]]
        start = t[i]
        for end in ends:
            h = end - start if t_needs_grad else float(end) - float(start)
            _call(callbacks, "callback_step", start, y, h)
            y_prev = y
            y, _, _, nfe = stepper(start, y, h, perturb=perturb) if perturb else stepper(start, y, h)
            _call(callbacks, "callback_accept_step", start, y_prev, h)
            counter.nfe += nfe
            counter.accepted += 1
            start = end
        ys.append(y)
    out = torch.stack(ys)
    i = _first_nonfinite(out)
    if i is not None:
        raise SolveError(
            f"the state became non-finite (inf or nan) between t={t_list[i - 1]:.6g} and t={t_list[i]:.6g}; "
            "the grid may be too coarse for this problem, or its solution blows up"
        )
    return out


def _replay_fixed(func, tableau, y, t0: float, h: float, n: int, t: torch.Tensor) -> Optional[str]:
    """Retake the ``n`` steps that turned the state non-finite, checking every evaluation of ``func``.

    Only after a failed fixed-step solve (so the checks' synchronisations cost nothing in a solve
    that works). **Returns:** a message when ``func`` returned nan/inf at a finite state, else
    ``None`` when the state turned non-finite without that (the generic message then stands).
    """
    with torch.no_grad():
        for j in range(n):
            t_j = t0 + j * h
            ks = []
            for i in range(tableau.stages):
                y_i = y if i == 0 else add_step(y, h, tableau.a[i], ks)
                if not bool(torch.isfinite(y_i).all()):
                    return None
                t_i = t_j + tableau.c[i] * h
                k = func(torch.tensor(t_i, dtype=t.dtype, device=t.device), y_i)
                if not bool(torch.isfinite(k).all()):
                    size = float(y_i.abs().max()) if y_i.numel() else 0.0
                    if size > _huge(y_i.dtype):
                        return (
                            f"the state became non-finite (inf or nan) between t={t0:.6g} and "
                            f"t={t0 + n * h:.6g} after growing to |y| = {size:.3g} at t={t_i:.6g} (steps of "
                            f"{h:.3g}); the solution blows up there, or the step size is too large"
                        )
                    return (
                        f"func returned a non-finite value (nan or inf) at t={t_i:.6g} for a finite state "
                        f"(largest |y| {size:.3g}), in the step of size {h:.3g} from t={t_j:.6g}; func itself "
                        "produces nan/inf there, or the step left the region where func is defined "
                        "(a smaller step_size may help)"
                    )
                ks.append(k)
            y = add_step(y, h, tableau.b, ks)
    return None


def _initial_step(func, t0, y0, f0, order, rtol, atol, direction, error_numel, counter, norm=None) -> float:
    """Hairer, Nørsett & Wanner's starting step (Solving ODEs I, II.4): one extra evaluation.

    ``norm``: the user's error norm (torchdiffeq's ``norm`` option), else the RMS.
    """
    def rms(x):
        x = x.detach()
        if error_numel is not None:
            x = x.reshape(-1)[:error_numel]
        if norm is not None:
            return abs(float(norm(x)))
        return float(torch.linalg.vector_norm(x) / math.sqrt(max(x.numel(), 1)))

    y0, f0 = y0.detach(), f0.detach()
    scale = atol + rtol * y0.abs()
    d0, d1 = rms(y0 / scale), rms(f0 / scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    y1 = y0 + (direction * h0) * f0
    f1 = func(t0.detach() + direction * h0, y1).detach()
    counter.nfe += 1
    d2 = rms((f1 - f0) / scale) / h0
    if max(d1, d2) <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
    return min(100 * h0, h1)


# Tries in which func returned nan/inf at a finite stage state, without the solve getting past the
# time where it did, before the solve stops. Each such try shrinks the step by min_factor (0.2
# by default), which lets a step that overshot the region where func is defined come back; a
# func that returns nan/inf at or just after the current time is reported after a few tries.
NONFINITE_TRIES = 8


def _nonfinite_stage(tableau, t_f: float, y: torch.Tensor, h, h_f: float, ks):
    """After a step whose error ratio was nan or inf: where ``func`` returned nan/inf at a finite state.

    **Returns:** ``(t, largest |y|)`` of the first stage whose derivative is not finite while its
    input state is, or ``None`` when every stage is finite (the error estimate overflowed) or the
    offending stage's input already was not (the state blew up within the step).
    """
    finite = torch.stack([torch.isfinite(k).all() for k in ks]).tolist()
    if all(finite):
        return None
    i = finite.index(False)
    y_i = y if i == 0 else add_step(y, h, tableau.a[i], ks[:i])
    size = float(y_i.detach().abs().max()) if y_i.numel() else 0.0
    if not math.isfinite(size) or size > _huge(y_i.dtype):
        return None
    return t_f + tableau.c[i] * h_f, size


def _huge(dtype: torch.dtype) -> float:
    """A state this large is blowing up: squaring it overflows ``dtype``."""
    return torch.finfo(dtype).max ** 0.5


def _func_nonfinite_message(tries, t_now_f: float, underflow: Optional[float] = None) -> str:
    t_bad, size = min(tries, key=lambda x: abs(x[0] - t_now_f))  # the failure nearest the solve
    if underflow is not None:
        how = f"the step size fell to {underflow:.3g} trying to avoid it"
    else:
        how = f"{len(tries)} tries from t={t_now_f:.6g}, each with a shorter step, failed so"
    return (
        f"func returned a non-finite value (nan or inf) at t={t_bad:.6g} for a finite state "
        f"(largest |y| {size:.3g}); {how}. func itself produces nan/inf there (evaluate it near "
        f"t={t_bad:.6g}), or the solution leaves the region where func is defined"
    )


def _integrate_adaptive(func, stepper, y0, t, settings: SolverSettings, counter: StepCounter, error_numel,
                        callbacks: Optional[dict] = None) -> torch.Tensor:
    callbacks = callbacks or {}
    tableau = settings.tableau
    t_list = t.tolist()
    t_end = t_list[-1]
    direction = 1.0 if t_end > t_list[0] else -1.0
    eps = torch.finfo(y0.dtype).eps
    exponent = -1.0 / (tableau.error_order + 1)
    min_step, max_step = settings.min_step, settings.max_step
    # step_t and jump_t inside the span, in the direction of integration: steps end on each
    jumps = set(settings.jump_t)
    stops = sorted((x for x in set(settings.step_t) | jumps
                    if direction * (x - t_list[0]) > 0 and direction * (t_end - x) > 0),
                   key=lambda x: direction * x)
    next_stop = 0

    t_now = t[0]
    t_now_f = t_list[0]
    y = y0
    f0 = func(t_now, y)
    counter.nfe += 1
    _check_first_finite(f0, t_now_f)
    if settings.first_step is not None:
        h_abs = settings.first_step
    else:
        h_abs = _initial_step(func, t_now, y, f0, tableau.order, settings.rtol, settings.atol,
                              direction, error_numel, counter,
                              settings.norm if callable(settings.norm) else None)

    if (getattr(stepper, "loop_spec", None) is not None and not callbacks and not stops
            and not torch.is_grad_enabled()):
        # a compiled stepper on the CPU, no gradient through the solve: the whole loop compiled
        from .adaptive_loop import solve_in_one_call
        out = solve_in_one_call(stepper, settings, t, y, f0, h_abs, direction, counter)
        if out is not None:
            return out
        # it stopped short: the eager loop below retakes the solve and reports why
    ys: List[torch.Tensor] = [y0]
    next_out = 1
    steps = 0
    nonfinite_at = None
    func_nonfinite = []  # (t, largest |y|) where func gave nan/inf at a finite state, one per failed try
    last_culprit = None  # the latest such (t, largest |y|)
    while next_out < len(t_list):
        if steps >= settings.max_num_steps:
            raise SolveError(
                f"reached max_num_steps={settings.max_num_steps} at t={t_now_f:.6g} before reaching "
                f"t={t_end:.6g} (method {tableau.name!r}, rtol={settings.rtol:g}, atol={settings.atol:g}); "
                "the problem may be stiff: raise options['max_num_steps'], loosen the tolerances, "
                "or use a fixed-step method"
            )
        steps += 1
        h_abs = min(max(h_abs, min_step), max_step)
        if h_abs <= 4 * eps * max(abs(t_now_f), 1.0):
            if last_culprit is not None:
                raise SolveError(_func_nonfinite_message([last_culprit], t_now_f, underflow=h_abs))
            if nonfinite_at is not None:
                raise SolveError(
                    f"the state became non-finite (inf or nan) near t={nonfinite_at:.6g} "
                    "and the step size underflowed trying to avoid it; the solution may blow up there"
                )
            raise SolveError(
                f"step size underflow at t={t_now_f:.6g}: the step fell to {h_abs:.3g}, below what "
                f"{y0.dtype} can resolve; the problem may be stiff or singular there"
            )
        # the step ends exactly on the target: the last time, or with no dense output the next one,
        # or an earlier step_t / jump_t
        target = next_out if tableau.dense is None else len(t_list) - 1
        t_target = t_list[target]
        stop = stops[next_stop] if next_stop < len(stops) else None
        if stop is not None and direction * (stop - t_target) >= 0:
            stop = None
        t_goal = t_target if stop is None else stop
        last = direction * (t_now_f + direction * h_abs - t_goal) >= -4 * eps * max(abs(t_goal), 1.0)
        at_jump = last and stop is not None and stop in jumps
        if last and stop is None:
            h = t[target] - t_now  # a tensor, so the state there depends on t[target]
            h_f = t_target - t_now_f
        elif last:
            h = h_f = stop - t_now_f
        else:
            h = h_f = direction * h_abs
        _call(callbacks, "callback_step", t_now, y, h)
        if at_jump:  # the stages at the jump see f's value from before it
            y_new, ks, ratio, nfe = stepper(t_now, y, h, f0, perturb=(False, True))
        else:
            y_new, ks, ratio, nfe = stepper(t_now, y, h, f0)
        counter.nfe += nfe
        ratio = float(ratio)  # the one synchronisation per step: accept or reject
        if not math.isfinite(ratio):
            # rare, so more synchronisations are fine here: did func return nan/inf itself?
            culprit = _nonfinite_stage(tableau, t_now_f, y, h, h_f, ks)
            counter.rejected += 1
            _call(callbacks, "callback_reject_step", t_now, y, h)
            if culprit is not None:
                last_culprit = culprit
                func_nonfinite.append(culprit)
                if len(func_nonfinite) >= NONFINITE_TRIES:
                    raise SolveError(_func_nonfinite_message(func_nonfinite, t_now_f))
            nonfinite_at = t_now_f + h_f
            h_abs = abs(h_f) * settings.min_factor
            continue
        if ratio <= 1.0 or abs(h_f) <= min_step:  # a step at min_step is accepted whatever its error
            counter.accepted += 1
            _call(callbacks, "callback_accept_step", t_now, y, h)
            t_new_f = t_goal if last else t_now_f + h_f
            while next_out < len(t_list) and direction * (t_list[next_out] - t_new_f) <= 0:
                if last and stop is None and next_out == target:
                    ys.append(y_new)
                else:
                    theta = (t[next_out] - t_now) / h
                    ys.append(interpolate(tableau, y, y_new, ks, h, theta))
                next_out += 1
            t_now = t[target] if last and stop is None else t_now + h
            t_now_f = t_new_f
            y, f0 = y_new, ks[-1]
            if last and stop is not None:
                next_stop += 1
                if at_jump:
                    # past a jump of f: the next step starts from f's value after it
                    f0 = func(nudge(t_now, t_now + direction), y)
                    counter.nfe += 1
            nonfinite_at = None
            if func_nonfinite and direction * (t_now_f - func_nonfinite[-1][0]) > 0:
                func_nonfinite = []  # the solve got past where func failed
        else:
            counter.rejected += 1
            _call(callbacks, "callback_reject_step", t_now, y, h)
        factor = settings.max_factor if ratio == 0 else settings.safety * ratio ** exponent
        factor = min(settings.max_factor, max(settings.min_factor, factor))
        if ratio > 1.0:
            factor = min(factor, 1.0)
        h_abs = abs(h_f) * factor
    return torch.stack(ys)
