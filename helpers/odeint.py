"""``odeint``: solve an ODE and backpropagate through the solver.

Introduced in the chapter "Neural ODEs and the forward pass".
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .options import make_settings
from .per_sample import check_per_sample
from .steppers import compiled_stepper, resolve_compile
from .solve import integrate
from .stats import SolveStats, StepCounter, _set_last
from .tuple_state import flatten_state, tuple_options


def check_inputs(func, y0, t) -> torch.Tensor:
    """Check ``func``, ``y0`` and ``t`` as ``odeint`` and ``odeint_adjoint`` take them.

    **Returns:** ``t`` cast to ``y0``'s dtype (still linked to the original ``t`` by autograd,
    so its gradient arrives in the original dtype): ``func`` always sees times in the state's
    dtype, and the solution has the state's dtype, as in torchdiffeq.

    Used in the chapter "Neural ODEs and the forward pass".
    """
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y), got {type(func).__name__}")
    if not isinstance(y0, torch.Tensor):
        hint = " (a tuple of tensors is accepted too, a list is not)" if isinstance(y0, list) else ""
        raise TypeError(f"y0 must be a torch.Tensor or a tuple of tensors, got {type(y0).__name__}{hint}")
    if not y0.dtype.is_floating_point:
        raise TypeError(f"y0 must be a real floating-point tensor (float32 or float64), got dtype {y0.dtype}")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a 1-D torch.Tensor of times, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"t must be a floating-point tensor, got dtype {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"t must be 1-D, got a tensor of shape {tuple(t.shape)}")
    t_dtype = t.dtype
    if len(t) < 1:
        raise ValueError("t must hold at least one time (the initial time), got an empty tensor")
    if t.device != y0.device:
        raise ValueError(f"t is on {t.device} but y0 is on {y0.device}; put both on the same device")
    if t.dtype != y0.dtype:
        t = t.to(y0.dtype)
    times = t.tolist()
    if not all(map(_finite, times)):
        raise ValueError("t must contain only finite values")
    steps = [b - a for a, b in zip(times[:-1], times[1:])]
    increasing = bool(steps) and steps[0] > 0
    for i, step in enumerate(steps):
        if step == 0 or (step > 0) != increasing:
            cast = f" (after casting t to y0's dtype {y0.dtype})" if t.dtype != t_dtype else ""
            raise ValueError(
                "t must be strictly increasing or strictly decreasing; "
                f"t[{i}]={times[i]!r} and t[{i + 1}]={times[i + 1]!r} break that{cast}"
            )
    if not bool(torch.isfinite(y0).all()):
        raise ValueError("y0 contains inf or nan")
    if isinstance(func, torch.nn.Module):
        for name, p in func.named_parameters():
            if p.device != y0.device:
                raise ValueError(f"func's parameter {name!r} is on {p.device} but y0 is on {y0.device}; put both on the same device")
    return t


def make_stepper(func, settings, compiled, device, error_numel=None, adjoint_of=None):
    """The compiled stepper that ``compiled`` asks for, or ``None`` for the default eager one.

    Used in the chapter "Neural ODEs and the forward pass".
    """
    mode = resolve_compile(compiled)
    if mode is None:
        return None
    if settings.per_sample_steps:
        raise ValueError("compiled=True cannot be combined with options['per_sample_steps'] (yet); choose one")
    return compiled_stepper(func, settings.tableau, settings.rtol, settings.atol, mode,
                            error_numel=error_numel, adjoint_of=adjoint_of, device_type=device.type)


# torchdiffeq's multistep and SciPy methods: not Runge–Kutta tableaus, so helpers leaves them out
NOT_PROVIDED = ("adams", "explicit_adams", "implicit_adams", "fixed_adams", "scipy_solver")


def refuse_not_provided(method, argument: str = "method") -> None:
    """Refuse, with a way forward, a torchdiffeq method that helpers does not provide.

    Used in the chapter "Neural ODEs and the forward pass".
    """
    if isinstance(method, str) and method in NOT_PROVIDED:
        raise ValueError(
            f"{argument}={method!r} is a torchdiffeq method that helpers does not provide (helpers has "
            "the Runge-Kutta methods only); use 'dopri5' (adaptive, the default) or 'rk4' (fixed step), "
            f"or call torchdiffeq.odeint itself for {method!r}"
        )


def one_time_solution(y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The solution at the single time ``t[0]``: ``y0`` itself, as a new tensor of shape ``(1, *y0.shape)``.

    Used in the chapter "Neural ODEs and the forward pass".
    """
    return y0.unsqueeze(0).clone()


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def odeint(
    func: Callable,
    y0: torch.Tensor,
    t: torch.Tensor,
    *,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    method: Optional[str] = None,
    options: Optional[dict] = None,
    stats: Optional[SolveStats] = None,
    compiled=False,
    event_fn: Optional[Callable] = None,
    gradient: str = "backprop",
    gradient_params=None,
) -> torch.Tensor:
    """Solve ``dy/dt = func(t, y)`` from ``y(t[0]) = y0`` and return ``y`` at every time in ``t``.

    Gradients flow by backpropagating through every step of the solver, so memory grows with
    the number of steps; :func:`helpers.odeint_adjoint` keeps it flat.

    **Arguments:**

    - `func`: the vector field, called as ``func(t, y)`` with a 0-d tensor ``t``; it returns
      ``dy/dt`` with ``y``'s shape, dtype and device. An ``nn.Module`` or any callable.
    - `y0`: the initial state, a floating-point tensor of any shape (a batch is fine), or a
      tuple of such tensors of one dtype on one device; ``func`` then takes and returns tuples.
    - `t`: 1-D, strictly increasing or strictly decreasing, on ``y0``'s device. ``t[0]`` is the
      initial time; a single time returns ``y0``. ``t`` is cast to ``y0``'s dtype (``func``
      sees times in that dtype; the gradient with respect to ``t`` keeps ``t``'s dtype).
      When ``t`` requires grad, its gradients come from the boundary form,
      dL/dt0 = -λ(t0)·f(t0, z(t0)) and dL/dt_i = ∂L/∂z(t_i)·f(t_i, z(t_i)), as in
      ``odeint_adjoint`` (right even when ``func`` jumps in t), at the cost of one more
      evaluation of ``func`` per requested time (see :func:`times_by_boundary_form`).
    - `rtol`, `atol`: relative and absolute tolerances of the adaptive methods.
    - `method`: ``"dopri5"`` (default), ``"bosh3"``, ``"adaptive_heun"``, ``"fehlberg2"``,
      ``"dopri8"`` (adaptive); ``"euler"``, ``"midpoint"``, ``"rk4"`` (the classical one;
      torchdiffeq's rk4 is the 3/8 rule), ``"heun2"``, ``"heun3"`` (fixed step). dopri8 has
      no dense output: its steps end on every requested time. torchdiffeq's Adams and SciPy
      methods are not provided.
    - `options`: for fixed-step methods ``step_size`` (the largest step; each interval between
      requested times is cut into equal steps no longer than it, counted exactly (a length
      within rounding of a whole number of steps takes that number), one step per interval if
      omitted; torchdiffeq instead lays one grid ``t0 + k·step_size`` over the whole span and
      interpolates linearly at requested times off it, so the two agree to rounding when
      every requested time lies on that grid), ``grid_constructor`` (instead of ``step_size``:
      ``grid_constructor(func, y0, t)`` returns the step grid from ``t[0]`` to ``t[-1]``; the
      steps run between its points and the requested times together), ``perturb`` (``True``:
      each step's first stage is evaluated just after its start and its stages at its end just
      before it, so a ``func`` that jumps at a step boundary is seen from inside the step),
      ``interp`` (``"cubic"``, the default, or ``"linear"``: how the state inside a step is
      interpolated to locate an event of ``event_fn``; torchdiffeq's default is ``"linear"``;
      helpers steps onto every requested time, so no output is interpolated) and
      ``max_num_steps``; for adaptive methods ``first_step``, ``max_num_steps`` (default
      10000), ``safety``, ``min_factor``, ``max_factor``, ``min_step`` and ``max_step`` (a step
      of ``min_step`` is accepted whatever its error), ``norm`` (a callable applied to the
      scaled error ``error / (atol + rtol·max(|y0|, |y1|))`` in place of the RMS), ``step_t``
      (times a step must end on; ``grid_points`` is accepted as its old name) and ``jump_t``
      (the same, for times where ``func`` jumps: stages there see ``func`` from before the
      jump, the next step from after it), and ``per_sample_steps``
      (``True``: each row of ``y0``, a batch of independent problems along dim 0, takes its own
      step sizes, so one stiff row no longer slows the rest; ``func`` then gets a 1-D ``t``
      with one time per row it is called on, and the rows must not interact). Unknown keys
      are an error. If ``func`` has torchdiffeq's callbacks ``callback_step``,
      ``callback_accept_step`` or ``callback_reject_step`` (methods taking ``t0, y0, dt``),
      they are called before each step, after each accepted step and after each rejected one; a
      fixed-step method accepts every step and calls only ``callback_step`` (it warns when
      ``func`` has the other two). In :func:`helpers.odeint_adjoint`'s backward solve the
      same with ``callback_step_adjoint`` etc., on the augmented state.
    - `stats`: a :class:`helpers.SolveStats` to fill in; :func:`helpers.last_stats` returns it too.
    - `compiled`: ``True`` (or a ``torch.compile`` mode such as ``"reduce-overhead"``) runs each
      step (all stages, the error estimate and the update) as one ``torch.compile`` graph; the
      first call with new shapes pays the compilation. ``False`` (default) runs eagerly. See
      :mod:`helpers.steppers`.
    - `event_fn`: ``g(t, y)`` returning a tensor: solve from ``t[0]`` (towards ``t[1]`` if
      given, else forwards) until an entry of ``g`` changes sign, as torchdiffeq does; see
      :mod:`helpers.events` and :func:`helpers.odeint_event`.
    - `gradient`: ``"backprop"`` (default): backpropagate through the steps. ``"forward"``:
      forward sensitivities; the solve integrates S = ∂z/∂(z0, θ) beside z
      (dS/dt = ∂f/∂z S + [0, ∂f/∂θ], by Jacobian–vector products vmapped over the d + p
      directions, so each step costs about d + p times more), keeps no graph of the steps, and
      the backward pass contracts ∂L/∂z(t_i) with the stored S(t_i); step-size control sees
      the state only, not S; ``t``'s gradient by the boundary form. ``y0`` of shape ``(d,)``
      or ``(batch, d)`` (independent rows: checked by one product at the start); no tuple
      state, ``event_fn``, ``per_sample_steps``, ``compiled`` or step callbacks
      (``ValueError``). See :mod:`helpers.forward_sensitivity`, and the chapter "Choosing a
      gradient method, by measurement".
    - `gradient_params`: with ``gradient="forward"``, the tensors θ (registered parameters of
      ``func``, an ``nn.Module``); by default ``func.parameters()``.

    **Returns:** a tensor of shape ``(len(t), *y0.shape)`` and ``y0``'s dtype, the state at each
    time in ``t``; for a tuple ``y0``, a tuple of such tensors, one per member. With
    ``event_fn``: ``(event_t, solution)``, ``solution`` holding ``y0`` and the state at the
    event (shape ``(2, *y0.shape)``), both with gradients (implicit function theorem).

    **Raises:** ``TypeError``/``ValueError`` for bad arguments, :class:`helpers.SolveError`
    when a solve cannot reach the final time.

    Introduced in the chapter "Neural ODEs and the forward pass".
    """
    func, y0, unflatten = flatten_state(func, y0)
    t = check_inputs(func, y0, t)
    refuse_not_provided(method)
    options = tuple_options(options, func)
    settings = make_settings(method, rtol, atol, options)
    refuse_tuple_per_sample(unflatten, settings, "options")
    check_per_sample(y0, settings, "options")
    stats = stats if stats is not None else SolveStats()
    stats.method = settings.tableau.name
    _set_last(stats)
    if gradient != "backprop" or gradient_params is not None:
        from .forward_sensitivity import forward_sensitivity_solve
        return forward_sensitivity_solve(func, y0, t, settings, stats, gradient, gradient_params, compiled,
                                         event_fn, unflatten)
    if event_fn is not None:
        return solve_to_event(func, y0, t, event_fn, settings, compiled, stats, unflatten)
    if len(t) == 1:
        ys = one_time_solution(y0, t)
        return ys if unflatten is None else unflatten(ys)
    stepper = make_stepper(func, settings, compiled, y0.device)
    counter = StepCounter()
    try:
        if t.requires_grad and torch.is_grad_enabled() and not settings.per_sample_steps:
            y0, t_fixed, attach = times_by_boundary_form(func, y0, t, counter)
            ys = attach(integrate(func, y0, t_fixed, settings, counter, stepper=stepper))
        else:
            ys = integrate(func, y0, t, settings, counter, stepper=stepper)
    finally:
        counter.add_to(stats)
    return ys if unflatten is None else unflatten(ys)


def times_by_boundary_form(func, y0, t, counter):
    """Solve with ``t`` held fixed, then attach every time's gradient by the boundary form.

    Moving the start time by δ moves the solution as moving the initial state by
    ``-δ f(t0, y0)`` does, and moving an output time t_i by δ moves that output by
    ``δ f(t_i, z(t_i))`` and nothing else. So the initial state becomes
    ``y0 - (t0 - t0.detach()) f(t0, y0)`` and each output gains ``(t_i - t_i.detach())
    f(t_i, z(t_i))``, terms whose value is zero: backpropagation then gives
    dL/dt0 = -λ(t0)·f(t0, z(t0)) and dL/dt_i = ∂L/∂z(t_i)·f(t_i, z(t_i)), the formulas that
    ``odeint_adjoint`` uses. Backpropagating through the steps instead would see only how the
    step times stretch with the requested times, which is wrong for a field that jumps in t
    (dy/dt = 1 before t = 0.5 and 3 after: dL/dt0 came out -3 where it is -1, and with fixed
    steps dL/dt1 came out as the average slope, 2.03, where it is 3). Costs one evaluation of
    ``func`` per requested time.

    **Arguments:** the checked ``func``, ``y0`` and ``t`` (``t`` requires grad); ``counter``
    counts the evaluations.

    **Returns:** ``(start, t_fixed, attach)``: the initial state to solve from, the times to
    solve at, and ``attach(ys)``, which adds the output times' terms to the solution and puts
    ``y0`` itself back as its first row.

    Not shown in the book; it extends the chapter "Gradients with respect to t0, t1 and the observation times".
    """
    t_fixed = t.detach()
    shift = t - t_fixed  # zero, with the gradient of t
    with torch.no_grad():
        f0 = func(t_fixed[0], y0.detach())
    counter.nfe += 1
    start = y0 + (-shift[0]) * f0

    def attach(ys):
        with torch.no_grad():
            rates = torch.stack([func(t_fixed[i], ys[i].detach()) for i in range(1, len(t_fixed))])
        counter.nfe += len(t_fixed) - 1
        shape = (-1,) + (1,) * (ys.dim() - 1)
        # the first output is y0 itself, which does not move with t0
        return torch.cat([y0[None], ys[1:] + shift[1:].reshape(shape) * rates])

    return start, t_fixed, attach


def solve_to_event(func, y0, t, event_fn, settings, compiled, stats, unflatten, adjoint_solve=None):
    """``odeint``'s (and ``odeint_adjoint``'s) answer when given ``event_fn``.

    **Arguments:** the checked ``func``, ``y0`` (flat) and ``t`` (only ``t[0]`` and the
    direction to ``t[1]`` count); ``event_fn`` as the user gave it; the solver settings; the
    ``stats`` to fill in; ``unflatten`` for a tuple state (or ``None``); ``adjoint_solve`` as
    for :func:`helpers.events.odeint_until_event`.

    **Returns:** ``(event_t, solution)``.

    Not shown in the book; it extends the chapter "Gradients with respect to t0, t1 and the observation times".
    """
    from .events import odeint_until_event

    if not callable(event_fn):
        raise TypeError(f"event_fn must be callable as event_fn(t, y), got {type(event_fn).__name__}")
    if resolve_compile(compiled) is not None:
        raise ValueError("compiled=True cannot be combined with event_fn (yet); choose one")
    if settings.per_sample_steps:
        raise ValueError("options['per_sample_steps'] cannot be combined with event_fn; choose one")
    if len(t) == 1:
        t = torch.cat([t, t.detach() + 1])
    g = event_fn if unflatten is None else (lambda s, y: event_fn(s, func.split(y)))
    counter = StepCounter()
    try:
        event_t, solution = odeint_until_event(func, y0, t, g, settings, counter, integrate, adjoint_solve)
    finally:
        counter.add_to(stats)
    return event_t, solution if unflatten is None else unflatten(solution)


def refuse_tuple_per_sample(unflatten, settings, argument: str) -> None:
    """Per-sample steps need a batch along dim 0, which a flattened tuple state no longer has.

    Not shown in the book; it extends the chapter "Appendix: measured performance".
    """
    if unflatten is not None and settings.per_sample_steps:
        raise ValueError(
            f"{argument}['per_sample_steps'] needs y0 to be one tensor with the batch along dim 0, "
            "not a tuple of tensors; concatenate the members along their last dimension instead")
