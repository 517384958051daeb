"""``odeint_adjoint``: gradients from one backward solve of the adjoint system.

The backward pass integrates the augmented state ``[z, λ, a_θ]`` from the last requested time to
the first:

    dz/dt   =  f(z, θ, t)
    dλ/dt   = -λ ∂f/∂z          (the adjoint equation)
    da_θ/dt = -λ ∂f/∂θ          (a_θ starts at 0, so a_θ(t0) = ∫ λ ∂f/∂θ dt = dL/dθ)

Both products with λ are vector–Jacobian products: one reverse-mode pass through ``f`` gives them,
and no Jacobian is ever formed. At every requested time t_i the jump ∂L/∂z(t_i) is added to λ and
z is re-anchored to the value the forward pass stored there. The gradients with respect to the
times are dL/dt_i = ∂L/∂z(t_i) · f(z(t_i), t_i) for each output time and
dL/dt_0 = -λ(t_0) · f(z(t_0), t_0) for the initial time.

Introduced in the chapter "The adjoint algorithm"; the time gradients in "Gradients with respect
to t0, t1 and the observation times".
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .odeint import (check_inputs, make_stepper, one_time_solution, refuse_not_provided, refuse_tuple_per_sample,
                     solve_to_event)
from .options import SolverSettings, make_settings
from .per_sample import backward_interval_per_sample, check_per_sample
from .solve import integrate
from .stats import SolveStats, StepCounter, _set_last
from .steppers import resolve_compile
from .tuple_state import TupleFunc, flatten_state, tuple_options


class AugmentedDynamics:
    """The right-hand side of the backward solve, on the flat state ``[z, λ, a_θ]``.

    **Arguments:**

    - `func`: the forward vector field ``func(t, z)``.
    - `shape`: the shape of ``z`` (and of ``λ``).
    - `params`: the parameters θ whose gradient accumulates in ``a_θ``.

    Calling it with ``(t, state)`` returns ``d state / dt``; each call costs one evaluation of
    ``func`` and one vector–Jacobian product.

    Introduced in the chapter "Choosing λ: the adjoint equation".
    """

    def __init__(self, func: Callable, shape: torch.Size, params: Sequence[torch.Tensor]):
        self.func = func
        self.shape = shape
        self.params = tuple(params)
        self.n = shape.numel()

    def split(self, state: torch.Tensor):
        """View the flat state as ``(z, λ, a_θ)``."""
        n = self.n
        return state[:n].view(self.shape), state[n:2 * n].view(self.shape), state[2 * n:]

    def __call__(self, t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        z, lam, _ = self.split(state)
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            f = self.func(t, z)
            inputs = (z,) + self.params
            if f.requires_grad:
                # -λ as grad_outputs gives -λ ∂f/∂z and -λ ∂f/∂θ directly
                vjps = torch.autograd.grad(f, inputs, grad_outputs=-lam, allow_unused=True)
            else:
                vjps = (None,) * len(inputs)
        parts = [f.detach().reshape(-1)]
        for x, g in zip(inputs, vjps):
            parts.append(torch.zeros(x.numel(), dtype=state.dtype, device=state.device) if g is None
                         else g.reshape(-1).to(state.dtype))
        return torch.cat(parts)


class AdjointNorm:
    """The backward solve's error norm as torchdiffeq hands it over: a function of a tuple.

    torchdiffeq's adjoint norm takes ``(t, y, adj_y, *adj_params)`` (for a tuple state
    ``(t, y_1, ..., y_k, adj_y_1, ..., adj_y_k, *adj_params)``), each the scaled error of that
    part of the augmented state. helpers' augmented state has no ``t``: its entry is a zero.

    Not shown in the book; it extends the chapter "When the adjoint goes wrong".
    """

    def __init__(self, norm: Callable):
        self.norm = norm

    def __call__(self, parts):
        return self.norm(parts)

    @classmethod
    def default(cls, norm, n_params: int):
        """``"seminorm"``, ``"full"`` or a user's callable as a norm of the tuple.

        The seminorm is the RMS of the state and adjoint parts together (the last ``n_params``
        parts left out); the full norm is the RMS of all parts but ``t``; a user's callable is
        wrapped as it is.
        """
        if callable(norm):
            return cls(norm)

        def rms(parts):
            keep = parts[1:] if norm == "full" else parts[1:len(parts) - n_params]
            x = torch.cat([p.reshape(-1) for p in keep])
            return torch.linalg.vector_norm(x) / math.sqrt(max(x.numel(), 1))
        return rms

    @staticmethod
    def on_flat(norm: Callable, func, shape, params) -> Callable:
        """``norm`` of the tuple, applied to the flat scaled error ``[z, λ, a_θ]``."""
        n = shape.numel()
        split = func.split if isinstance(func, TupleFunc) else (lambda x: (x.view(shape),))
        sizes = [p.numel() for p in params]

        def flat_norm(error):
            error = error.reshape(-1)
            z, lam, rest = error[:n], error[n:2 * n], error[2 * n:]
            theta = [part.view(p.shape) for part, p in zip(torch.split(rest, sizes), params)]
            parts = (torch.zeros((), dtype=error.dtype, device=error.device), *split(z), *split(lam), *theta)
            return torch.as_tensor(norm(parts))
        return flat_norm


def checkpoint_grid(t: torch.Tensor, checkpoints: int):
    """The requested times merged with ``checkpoints`` equally spaced interior times.

    **Returns:** ``(grid, out_index)``: the merged, strictly monotonic times (a tensor like ``t``)
    and the position of each requested time in it.

    Introduced in the chapter "When the adjoint goes wrong".
    """
    times = t.tolist()
    if checkpoints == 0:
        return t, list(range(len(times)))
    start, end = times[0], times[-1]
    span = abs(end - start)
    extra = [start + (end - start) * k / (checkpoints + 1) for k in range(1, checkpoints + 1)]
    extra = [x for x in extra if min(abs(x - s) for s in times) > 1e-9 * span]
    merged = sorted(set(times) | set(extra), reverse=end < start)
    position = {x: i for i, x in enumerate(merged)}
    grid = torch.tensor(merged, dtype=t.dtype, device=t.device)
    return grid, [position[x] for x in times]


class _OdeintAdjointFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, func, settings, adjoint_settings, stats, y0, t, compiled, guard, *params):
        grid, out_index = checkpoint_grid(t.detach(), adjoint_settings.checkpoints)
        counter = StepCounter()
        try:
            with torch.no_grad():
                stepper = make_stepper(func, settings, compiled, y0.device)
                # the guard watches func's first evaluation (the solve needs it anyway)
                forward_func = func if guard is None else guard.watch(func)
                ys_grid = integrate(forward_func, y0, grid, settings, counter, stepper=stepper)
        finally:
            counter.add_to(stats)
        ctx.func, ctx.adjoint_settings, ctx.stats, ctx.params = func, adjoint_settings, stats, params
        ctx.compiled = compiled
        # the backward solve's norm, readable and replaceable as torchdiffeq exposes it
        ctx.default_norm = AdjointNorm.default(adjoint_settings.norm, len(params))
        ctx.adjoint_options = {"norm": ctx.default_norm}
        ctx.out_index = out_index
        ctx.save_for_backward(grid, ys_grid)
        return ys_grid[out_index] if len(out_index) != len(grid) else ys_grid

    @staticmethod
    def backward(ctx, grad_ys):
        if torch.is_grad_enabled():
            raise ValueError(
                "odeint_adjoint does not give higher-order gradients (create_graph=True was asked for); "
                "use helpers.odeint, which backpropagates through the solver and supports them"
            )
        grid, ys_grid = (x.detach() for x in ctx.saved_tensors)
        func, settings, stats, params = ctx.func, ctx.adjoint_settings, ctx.stats, ctx.params
        out_index = ctx.out_index
        need_y0, need_t = ctx.needs_input_grad[4], ctx.needs_input_grad[5]
        dynamics = AugmentedDynamics(func, ys_grid.shape[1:], params)
        n = dynamics.n
        counter = StepCounter()
        norm = ctx.adjoint_options.get("norm")
        if norm is not ctx.default_norm or isinstance(norm, AdjointNorm):
            if not callable(norm):
                raise TypeError(f"adjoint_options['norm'] must be callable, got {type(norm).__name__}")
            # a norm on torchdiffeq's tuple (t, y, adj_y, *adj_params), called on the flat state
            settings = dataclasses.replace(settings, norm=AdjointNorm.on_flat(norm, func, ys_grid.shape[1:], params))
        error_numel = 2 * n if settings.norm == "seminorm" else None
        stepper = make_stepper(func, settings, ctx.compiled, ys_grid.device, error_numel=error_numel,
                               adjoint_of=(params, ys_grid.shape[1:]))
        # the jump ∂L/∂z at each grid time: the incoming gradient at requested times, zero at checkpoints
        jumps = {j: grad_ys[k] for k, j in enumerate(out_index)}

        lam = jumps[len(grid) - 1]
        a_theta = torch.zeros(sum(p.numel() for p in params), dtype=ys_grid.dtype, device=ys_grid.device)
        grad_t = torch.zeros(len(out_index), dtype=grid.dtype, device=grid.device) if need_t else None
        batch = ys_grid.shape[1] if settings.per_sample_steps else None

        def field_time(t_j):
            # with per-sample steps func always sees one time per row
            return t_j.expand(batch) if batch is not None else t_j

        def count_field_eval(counter):
            counter.nfe += 1
            if batch is not None:
                counter.sample_evals += batch
        try:
            with torch.no_grad():
                if need_t:
                    for k in range(1, len(out_index)):
                        j = out_index[k]
                        grad_t[k] = (grad_ys[k] * func(field_time(grid[j]), ys_grid[j])).sum()
                        count_field_eval(counter)
                for j in range(len(grid) - 1, 0, -1):
                    if settings.per_sample_steps:
                        # each sample of the batch steps on its own; a_θ sums their contributions
                        lam, a_theta = backward_interval_per_sample(
                            func, params, ys_grid[j], lam, a_theta, grid[j], grid[j - 1], settings, counter)
                        if j - 1 in jumps:
                            lam = lam + jumps[j - 1]
                        continue
                    # re-anchor z to its stored forward value, then solve [z, λ, a_θ] back one interval
                    state = torch.cat([ys_grid[j].reshape(-1), lam.reshape(-1), a_theta])
                    state = integrate(dynamics, state, grid[j - 1:j + 1].flip(0), settings, counter,
                                      error_numel=error_numel, check_first=False, stepper=stepper)[-1]
                    _, lam, a_theta = dynamics.split(state)
                    if j - 1 in jumps:
                        lam = lam + jumps[j - 1]
                if need_t:
                    # λ(t0) without the direct term ∂L/∂z(t0): z(t0) = y0 does not move with t0
                    grad_t[0] = -((lam - grad_ys[0]) * func(field_time(grid[0]), ys_grid[0])).sum()
                    count_field_eval(counter)
        finally:
            counter.add_to(stats, backward=True)

        grad_params = []
        offset = 0
        for p in params:
            grad_params.append(a_theta[offset:offset + p.numel()].view(p.shape).to(p.dtype))
            offset += p.numel()
        return (None, None, None, None, lam if need_y0 else None, grad_t, None, None, *grad_params)


def _adjoint_params(func, adjoint_params, y0) -> tuple:
    if adjoint_params is None:
        params = tuple(func.parameters()) if isinstance(func, nn.Module) else ()
    else:
        if isinstance(adjoint_params, torch.Tensor):
            raise TypeError("adjoint_params must be a sequence of tensors (e.g. list(model.parameters())), not one tensor")
        params = tuple(adjoint_params)
        for i, p in enumerate(params):
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"adjoint_params[{i}] must be a torch.Tensor, got {type(p).__name__}")
    params = tuple(p for p in params if p.requires_grad)
    for p in params:
        if p.device != y0.device:
            raise ValueError(f"a parameter of func is on {p.device} but y0 is on {y0.device}; put both on the same device")
        if not p.dtype.is_floating_point:
            raise TypeError(f"parameters must be floating point to receive gradients, got {p.dtype}")
    return params


# the forward options the backward solve inherits when it uses the forward method
_INHERITED = ("step_size", "max_num_steps", "per_sample_steps", "perturb", "grid_constructor", "interp",
              "jump_t", "step_t", "grid_points", "min_step", "max_step")


class UntrackedGradientGuard:
    """Refuses a ``func`` whose output depends on a grad-requiring tensor the adjoint was not given.

    The adjoint differentiates only with respect to ``y0``, ``t`` and the adjoint parameters; a
    tensor that ``func`` merely closes over (or holds as a plain attribute, not a Parameter)
    would silently get no gradient. :meth:`watch` wraps ``func`` so that its first evaluation,
    which the forward solve makes anyway, runs with autograd on; its graph is walked back to
    the leaf tensors, and one that is neither an adjoint parameter nor a parameter of ``func``
    raises ``ValueError``. No extra evaluation of ``func``.

    **Arguments:**

    - `func`: the vector field as the user gave it (for naming the tensor in the message).
    - `known`: the tensors whose gradients the adjoint computes or deliberately leaves out.

    Used in the chapter "The problem".
    """

    def __init__(self, func, known: Sequence[torch.Tensor]):
        self.func = func
        self.known_leaves = {id(p) for p in known if p.grad_fn is None}
        self.known_nodes = {p.grad_fn for p in known if p.grad_fn is not None}
        self.pending = True

    def watch(self, func: Callable) -> Callable:
        """``func`` with its first call checked; later calls go straight through."""
        def watched(t, y):
            if not self.pending:
                return func(t, y)
            self.pending = False
            # copies, so that a leaf func makes from its arguments (as a continuous normalising
            # flow does, to differentiate through the state) shares their storage, and a tensor
            # func closes over (y0 itself, say) does not
            t_in, y_in = t.detach().clone(), y.detach().clone()
            with torch.enable_grad():
                out = func(t_in, y_in)
            if isinstance(out, torch.Tensor) and out.requires_grad:
                inputs = {x.untyped_storage().data_ptr() for x in (t_in, y_in)}
                leaf = self.untracked_leaf(out, inputs)
                if leaf is not None:
                    raise ValueError(self.message(leaf))
                out = out.detach()
            return out
        watched.user_func = func  # where the step callbacks are looked up
        return watched

    def untracked_leaf(self, out: torch.Tensor, inputs=frozenset()) -> Optional[torch.Tensor]:
        """The first leaf tensor behind ``out`` that requires grad and is not known, or ``None``.

        Leaves whose storage is one of ``inputs`` (data pointers of ``func``'s arguments) are
        ``func``'s own arguments made differentiable, not tensors it closes over.
        """
        stack, seen = [out.grad_fn], set()
        while stack:
            node = stack.pop()
            if node is None or node in seen or node in self.known_nodes:
                continue
            seen.add(node)
            leaf = getattr(node, "variable", None)  # an AccumulateGrad node holds its leaf
            if leaf is not None:
                if id(leaf) not in self.known_leaves and leaf.untyped_storage().data_ptr() not in inputs:
                    return leaf
                continue
            stack.extend(next_node for next_node, _ in node.next_functions)
        return None

    def message(self, leaf: torch.Tensor) -> str:
        name = _find_name(self.func, leaf)
        shown = name or "w"
        what = f"the tensor {name!r}" if name else "a tensor"
        return (
            f"func's output depends on {what} (shape {tuple(leaf.shape)}, {leaf.dtype}) that requires grad "
            "but was not given to odeint_adjoint, so its gradient would be silently lost: the adjoint "
            "differentiates only with respect to y0, t and adjoint_params. Pass it in adjoint_params, "
            f"e.g. adjoint_params=[{shown}] for a plain function, or "
            f"adjoint_params=list(model.parameters()) + [{shown}] for an nn.Module "
            f"(or make it an nn.Parameter of the module); if its gradient is not wanted, use "
            f"{shown}.detach() inside func or call {shown}.requires_grad_(False)"
        )


def _find_name(func, leaf: torch.Tensor) -> Optional[str]:
    """A name for ``leaf`` as ``func`` sees it: a module attribute, a closure cell or a global."""
    if isinstance(func, nn.Module):
        for prefix, module in func.named_modules():
            for key, value in vars(module).items():
                if value is leaf:
                    return f"{prefix}.{key}" if prefix else key
        func = getattr(func, "base", func)  # a tuple-state wrapper around a plain function
    code = getattr(func, "__code__", None)
    if code is None:
        return None
    for key, cell in zip(code.co_freevars, getattr(func, "__closure__", None) or ()):
        try:
            if cell.cell_contents is leaf:
                return key
        except ValueError:  # an empty cell
            continue
    for key in code.co_names:
        if getattr(func, "__globals__", {}).get(key) is leaf:
            return key
    return None


def odeint_adjoint(
    func: Callable,
    y0: torch.Tensor,
    t: torch.Tensor,
    *,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    method: Optional[str] = None,
    options: Optional[dict] = None,
    adjoint_rtol: Optional[float] = None,
    adjoint_atol: Optional[float] = None,
    adjoint_method: Optional[str] = None,
    adjoint_options: Optional[dict] = None,
    adjoint_params: Optional[Sequence[torch.Tensor]] = None,
    stats: Optional[SolveStats] = None,
    compiled=False,
    event_fn: Optional[Callable] = None,
) -> torch.Tensor:
    """Solve like :func:`helpers.odeint`; compute gradients by solving the adjoint system backward.

    Memory does not grow with the number of steps: the forward pass keeps only the states at
    the requested times, and the backward pass reconstructs ``z`` as it goes.

    **Arguments:** ``func``, ``y0``, ``t``, ``rtol``, ``atol``, ``method``, ``options``,
    ``stats``, ``event_fn`` and ``compiled`` as for :func:`helpers.odeint` (with ``event_fn``
    the event is located without gradients, then one adjoint solve to it carries them;
    ``compiled`` also compiles the backward solve's step, the augmented dynamics with their
    vector–Jacobian product included; it needs the adjoint parameters to be registered
    parameters of ``func``), and:

    - `adjoint_rtol`, `adjoint_atol`, `adjoint_method`: the backward solve's tolerances and
      method; each defaults to the forward one.
    - `adjoint_options`: the backward solve's options. The same keys as ``options`` plus
      ``norm``: ``"seminorm"`` (default for adaptive methods) leaves the parameter-gradient
      channel out of the step-acceptance norm, ``"full"`` keeps it; a callable gets, as in
      torchdiffeq, the tuple ``(t, y, adj_y, *adj_params)`` of scaled errors (``t``'s is 0;
      a tuple state's members each in turn). The norm in use is
      ``ys.grad_fn.adjoint_options["norm"]`` (such a callable; without checkpoints); one put there before
      ``backward()`` steers the backward solve. When the backward method
      is the forward one, ``step_size``, ``max_num_steps``, ``perturb``, ``grid_constructor``,
      ``interp``, ``jump_t``, ``step_t``, ``min_step`` and ``max_step`` default to the
      forward values.
      ``checkpoints``: a number of equally spaced interior times at which the forward pass also
      stores the state (default 0); the backward solve re-anchors ``z`` there, which keeps the
      backward reconstruction of ``z`` accurate on dissipative systems, at the cost of storing
      those states.
      ``reconstruct``: how the backward solve gets z(t). ``"backsolve"`` (default) integrates
      z backward with λ; ``"interpolate"`` reads it from the forward solve's dense output
      (dopri5's own fourth-order interpolant, else the cubic Hermite polynomial through the
      ends of each step), so only ``[λ, a_θ]`` is integrated backward: stable where the
      forward problem is strongly dissipative, at the price of memory O(accepted forward
      steps) (``stats.dense_steps`` and ``stats.dense_bytes`` say how many and how much).
      It cannot be combined with ``checkpoints``, ``per_sample_steps``, ``compiled``,
      ``event_fn``, ``perturb``, ``jump_t``, a callable norm or adjoint step callbacks
      (``ValueError``). See :mod:`helpers.interpolated_adjoint`; the two are compared in the
      chapter "Choosing a gradient method, by measurement".
    - `adjoint_params`: the tensors to differentiate with respect to; by default
      ``func.parameters()`` if ``func`` is an ``nn.Module``, else none (gradients still reach
      ``y0`` and ``t``). With autograd on, a ``func`` whose output depends on any other tensor
      that requires grad (one it closes over, or a plain tensor attribute of the module) raises
      ``ValueError``: its gradient would be lost. Pass it, e.g. ``adjoint_params=[w]`` or
      ``adjoint_params=list(model.parameters()) + [w]``, or detach it. The check watches the
      forward solve's first evaluation of ``func``; it costs no extra evaluation.

    **Returns:** a tensor of shape ``(len(t), *y0.shape)`` and ``y0``'s dtype, the state at each
    time in ``t``; for a tuple ``y0`` (see :func:`helpers.odeint`), a tuple of such tensors.

    **Raises:** as :func:`helpers.odeint`; asking for a second-order gradient
    (``create_graph=True``) raises ``ValueError``.

    Introduced in the chapter "The problem".
    """
    func, y0, unflatten = flatten_state(func, y0)
    t = check_inputs(func, y0, t)
    refuse_not_provided(method)
    refuse_not_provided(adjoint_method, "adjoint_method")
    options = tuple_options(options, func)
    settings = make_settings(method, rtol, atol, options)
    if adjoint_method is None:
        adjoint_method = settings.tableau.name
    adjoint_options = {} if adjoint_options is None else adjoint_options
    if not isinstance(adjoint_options, dict):
        raise TypeError(f"adjoint_options must be a dict or None, got {type(adjoint_options).__name__}")
    reconstruct = adjoint_options.get("reconstruct", "backsolve")
    if "reconstruct" in adjoint_options:
        adjoint_options = {k: v for k, v in adjoint_options.items() if k != "reconstruct"}
    if adjoint_method == settings.tableau.name and options:
        # the same method backward: inherit the forward step settings unless overridden
        inherited = {k: v for k, v in options.items() if k in _INHERITED}
        adjoint_options = {**inherited, **adjoint_options}
    adjoint_settings = make_settings(
        adjoint_method,
        rtol if adjoint_rtol is None else adjoint_rtol,
        atol if adjoint_atol is None else adjoint_atol,
        adjoint_options,
        argument_prefix="adjoint_",
        adjoint=True,
    )
    refuse_tuple_per_sample(unflatten, settings, "options")
    refuse_tuple_per_sample(unflatten, adjoint_settings, "adjoint_options")
    check_per_sample(y0, settings, "options")
    check_per_sample(y0, adjoint_settings, "adjoint_options")
    params = _adjoint_params(func, adjoint_params, y0)
    stats = stats if stats is not None else SolveStats()
    stats.method = settings.tableau.name
    _set_last(stats)
    if reconstruct != "backsolve":
        from .interpolated_adjoint import check_reconstruct, interpolated_adjoint
        check_reconstruct(reconstruct, settings, adjoint_settings, compiled, event_fn, func)
        if len(t) == 1:
            ys = one_time_solution(y0, t) + (0 * t.sum() if t.requires_grad else 0)
        else:
            known = params + (tuple(func.parameters()) if isinstance(func, nn.Module) else ())
            guard = UntrackedGradientGuard(func, known) if torch.is_grad_enabled() else None
            ys = interpolated_adjoint(func, y0, t, settings, adjoint_settings, params, stats, guard)
        return ys if unflatten is None else unflatten(ys)
    if event_fn is not None:
        def adjoint_solve(y_start, times):
            return odeint_adjoint(
                func, y_start, times, rtol=rtol, atol=atol, method=method, options=options,
                adjoint_rtol=adjoint_rtol, adjoint_atol=adjoint_atol, adjoint_method=adjoint_method,
                adjoint_options=adjoint_options, adjoint_params=params, stats=stats)
        return solve_to_event(func, y0, t, event_fn, settings, compiled, stats, unflatten, adjoint_solve)
    if len(t) == 1:
        # nothing to solve; t gets a zero gradient, as from torchdiffeq's adjoint
        ys = one_time_solution(y0, t)
        if t.requires_grad:
            ys = ys + 0 * t.sum()
        return ys if unflatten is None else unflatten(ys)
    if resolve_compile(compiled) is not None:
        make_stepper(func, adjoint_settings, compiled, y0.device, adjoint_of=(params, y0.shape))  # refuse bad setups now
    guard = None
    if torch.is_grad_enabled():
        known = params + (tuple(func.parameters()) if isinstance(func, nn.Module) else ())
        guard = UntrackedGradientGuard(func, known)
    ys = _OdeintAdjointFunction.apply(func, settings, adjoint_settings, stats, y0, t, compiled, guard, *params)
    return ys if unflatten is None else unflatten(ys)
