"""One gradient, six ways: measure each method's time, memory and error on the same problem.

Every method here returns dL/dθ for ``L = loss(z(t1))``, where ``z`` solves ``dz/dt = func(t, z)``
from ``y0`` over the two times ``t = [t0, t1]``:

- ``"backprop"``: autograd through :func:`helpers.odeint` (discretise, then optimise);
- ``"backsolve"``: :func:`helpers.odeint_adjoint`, which rebuilds ``z`` backward;
- ``"checkpointed"``: ``odeint_adjoint`` with ``adjoint_options=dict(checkpoints=K)``;
- ``"interpolated"``: ``odeint_adjoint`` with ``adjoint_options=dict(reconstruct="interpolate")``,
  which reads ``z`` from the forward solve's dense output instead of rebuilding it;
- ``"forward"``: forward sensitivity, ``helpers.odeint(..., gradient="forward")``, which carries
  ``S = dz/dθ`` along the forward solve (its work grows with the number of parameters);
- ``"discrete"``: :func:`helpers.discrete_adjoint.rk_discrete_adjoint`, the exact adjoint of a
  fixed-step Runge–Kutta method (fixed steps only: the solver settings must name a fixed-step
  method and ``options["step_size"]``).

:func:`measure` times forward and backward together (wall and processor time, over a few
runs) and reads the memory that the forward pass keeps for the backward one, as chapter "The
problem" does with
:func:`helpers.memory.graph_memory` (plus, for the interpolating adjoint, the dense output it
stores; for the discrete adjoint, its stored stage values).

Introduced in the chapter "Choosing a gradient method, by measurement".
"""
from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Hashable, Mapping, Optional, Sequence

import torch

from .adjoint import odeint_adjoint
from .discrete_adjoint import rk_discrete_adjoint
from .memory import graph_memory
from .odeint import odeint
from .stats import SolveStats
from .tableaus import METHODS as TABLEAUS

GRADIENT_METHODS = ("backprop", "backsolve", "checkpointed", "interpolated", "forward", "discrete")


@dataclass
class Measurement:
    """What :func:`measure` found for one method on one problem.

    **Fields:** `method`; `seconds`, the median wall time of a forward and backward pass;
    `fastest`, the shortest of those times; `cpu`, the median processor time spent on one pass:
    while torch runs on one thread, that of the calling thread alone (``time.thread_time``: the
    work itself, which neither other programs on a busy machine nor other threads of the same
    process, such as a test runner's, inflate), otherwise the whole process's
    (``time.process_time``); `fastest_cpu`, the shortest of those processor times (a busy or
    virtual machine only ever adds to a run's time, so the shortest is the steadiest estimate of
    the work itself);
    `kept_bytes`, the bytes the forward pass keeps for the backward pass; `error`, the relative
    error ``|g - reference| / |reference|`` of the gradient (``nan`` without a reference);
    `nfe_forward`, `nfe_backward`, the evaluations of the field (backward: of the augmented
    dynamics, each one evaluation and one vector–Jacobian product; for backprop and the
    discrete adjoint, the vector–Jacobian products of the reverse pass).

    Introduced in the chapter "Choosing a gradient method, by measurement".
    """

    method: str
    seconds: float
    fastest: float
    cpu: float
    fastest_cpu: float
    kept_bytes: int
    error: float
    nfe_forward: int
    nfe_backward: int


def _params(func, params):
    if params is not None:
        return tuple(params)
    if isinstance(func, torch.nn.Module):
        return tuple(p for p in func.parameters() if p.requires_grad)
    raise TypeError("params must be given when func is not an nn.Module")


def _fixed_grid(t: torch.Tensor, solver: dict) -> torch.Tensor:
    """The grid ``odeint`` steps on for a fixed-step method with ``options["step_size"]``."""
    method = solver.get("method")
    step = (solver.get("options") or {}).get("step_size")
    if method not in TABLEAUS or TABLEAUS[method].adaptive or step is None:
        raise ValueError(
            "the discrete adjoint needs a fixed-step method and a step size, "
            f"e.g. solver=dict(method='rk4', options=dict(step_size=0.1)); got {solver!r}")
    t0, t1 = float(t[0]), float(t[-1])
    n = math.ceil(abs(t1 - t0) / step - 1e-9)
    return torch.linspace(t0, t1, n + 1, dtype=t.dtype)


def _solve_kwargs(method: str, solver: dict, checkpoints: int) -> tuple:
    """The solver function and its keyword arguments for one of the autograd-based methods."""
    if method == "backprop":
        return odeint, dict(solver)
    if method == "forward":
        return odeint, dict(solver, gradient="forward")
    adjoint_options = dict(solver.get("adjoint_options") or {})
    if method == "checkpointed":
        adjoint_options["checkpoints"] = checkpoints
    elif method == "interpolated":
        adjoint_options["reconstruct"] = "interpolate"
    elif method != "backsolve":
        raise ValueError(f"method must be one of {GRADIENT_METHODS}, got {method!r}")
    kwargs = {k: v for k, v in solver.items() if k != "adjoint_options"}
    return odeint_adjoint, dict(kwargs, adjoint_options=adjoint_options)


def gradient(method: str, func: Callable, y0: torch.Tensor, t: torch.Tensor,
             loss: Callable[[torch.Tensor], torch.Tensor], *, solver: Optional[dict] = None,
             params: Optional[Sequence[torch.Tensor]] = None, checkpoints: int = 8,
             stats: Optional[SolveStats] = None) -> torch.Tensor:
    """dL/dθ by one of :data:`GRADIENT_METHODS`, as one flat row of the ``p`` parameters.

    **Arguments:**

    - `method`: one of :data:`GRADIENT_METHODS`.
    - `func`, `y0`, `t`: the problem, as for :func:`helpers.odeint`; ``t`` holds two times.
    - `loss`: a function of ``z(t1)`` (shaped like ``y0``) returning a scalar tensor.
    - `solver`: keyword arguments for the solver (``rtol``, ``atol``, ``method``,
      ``options``, and for the adjoints ``adjoint_options``...).
    - `params`: the tensors θ; by default ``func``'s trainable parameters.
    - `checkpoints`: ``K`` for ``"checkpointed"``.
    - `stats`: a :class:`helpers.SolveStats` to fill in (the discrete adjoint fills in its
      evaluations as ``nfe_forward`` and its vector–Jacobian products as ``nfe_backward``).

    **Returns:** a 1-D tensor of ``p`` entries.

    Introduced in the chapter "Choosing a gradient method, by measurement".
    """
    if method not in GRADIENT_METHODS:
        raise ValueError(f"method must be one of {GRADIENT_METHODS}, got {method!r}")
    if not isinstance(t, torch.Tensor) or t.shape != (2,):
        raise ValueError("t must hold exactly two times, t0 and t1")
    if not callable(loss):
        raise TypeError(f"loss must be a function of z(t1), got {type(loss).__name__}")
    solver = {} if solver is None else dict(solver)
    params = _params(func, params)
    if method == "discrete":
        grid = _fixed_grid(t, solver)

        def dldz(z_end):
            with torch.enable_grad():
                z_end = z_end.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(loss(z_end), z_end)
            return g

        result = rk_discrete_adjoint(func, solver["method"], y0, grid, dldz, params=params)
        if stats is not None:
            stats.nfe_forward += result.nfe
            stats.nfe_backward += result.n_vjp
        return torch.cat([g.reshape(-1) for g in result.param_grads])
    solve, kwargs = _solve_kwargs(method, solver, checkpoints)
    if method == "forward":
        kwargs["gradient_params"] = params
    elif method != "backprop":
        kwargs["adjoint_params"] = params
    zs = solve(func, y0, t, stats=stats, **kwargs)
    grads = torch.autograd.grad(loss(zs[-1]), params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                      for g, p in zip(grads, params)])


def kept_bytes(method: str, func: Callable, y0: torch.Tensor, t: torch.Tensor,
               loss: Callable[[torch.Tensor], torch.Tensor], *, solver: Optional[dict] = None,
               params: Optional[Sequence[torch.Tensor]] = None, checkpoints: int = 8) -> int:
    """The bytes the forward pass of ``method`` keeps for its backward pass.

    For the autograd-based methods, :func:`helpers.memory.graph_memory` of the forward solve
    and the loss, plus for ``"interpolated"`` the dense output it stores (which autograd does
    not see; ``SolveStats.dense_bytes``); for ``"discrete"``, the stage values
    :func:`rk_discrete_adjoint` stores.
    The working memory of the backward pass itself (a few copies of its state) is not counted.

    **Arguments:** as for :func:`gradient`. **Returns:** an ``int``.

    Introduced in the chapter "Choosing a gradient method, by measurement".
    """
    solver = {} if solver is None else dict(solver)
    params = _params(func, params)
    if method == "discrete":
        grid = _fixed_grid(t, solver)
        result = rk_discrete_adjoint(func, solver["method"], y0, grid,
                                     torch.zeros_like(y0), params=params)
        return result.stored_numel * y0.element_size()
    if method not in GRADIENT_METHODS:
        raise ValueError(f"method must be one of {GRADIENT_METHODS}, got {method!r}")
    solve, kwargs = _solve_kwargs(method, solver, checkpoints)
    if method == "forward":
        kwargs["gradient_params"] = params
    elif method != "backprop":
        kwargs["adjoint_params"] = params
    stats = SolveStats()
    kept = graph_memory(lambda: loss(solve(func, y0, t, stats=stats, **kwargs)[-1]))
    return kept + stats.dense_bytes


def measure(method: str, func: Callable, y0: torch.Tensor, t: torch.Tensor,
            loss: Callable[[torch.Tensor], torch.Tensor], *, reference: Optional[torch.Tensor] = None,
            repeats: int = 3, solver: Optional[dict] = None,
            params: Optional[Sequence[torch.Tensor]] = None, checkpoints: int = 8,
            memory: bool = True) -> Measurement:
    """Time, memory, work and error of one method's gradient on one problem.

    **Arguments:** as for :func:`gradient`, and:

    - `reference`: the gradient to compare with (a flat row of ``p`` entries), e.g. from a
      closed form or from backprop at a tight tolerance; ``None`` gives ``error = nan``.
    - `repeats`: how many timed runs (forward and backward); the median and the shortest
      wall time and the median and the shortest processor time are reported. Garbage
      collection is paused during the runs, as ``timeit`` pauses it.
    - `memory`: measure the bytes kept (one more forward pass); ``False`` reports ``-1``.

    **Returns:** a :class:`Measurement`.

    Introduced in the chapter "Choosing a gradient method, by measurement".
    """
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    args = dict(solver=solver, params=params, checkpoints=checkpoints)
    # one torch thread: the work runs on this thread, so its clock sees nothing else
    cpu_clock = time.thread_time if torch.get_num_threads() == 1 else time.process_time
    seconds, cpu = [], []
    # as timeit does: a collection of the caller's objects (in a long test run, millions of
    # them) must not land in one run's time
    collecting = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            stats = SolveStats()
            start, start_cpu = time.perf_counter(), cpu_clock()
            g = gradient(method, func, y0, t, loss, stats=stats, **args)
            seconds.append(time.perf_counter() - start)
            cpu.append(cpu_clock() - start_cpu)
    finally:
        if collecting:
            gc.enable()
    error = float("nan")
    if reference is not None:
        error = ((g - reference).norm() / reference.norm()).item()
    return Measurement(
        method=method, seconds=statistics.median(seconds), fastest=min(seconds),
        cpu=statistics.median(cpu), fastest_cpu=min(cpu),
        kept_bytes=kept_bytes(method, func, y0, t, loss, **args) if memory else -1, error=error,
        nfe_forward=stats.nfe_forward, nfe_backward=stats.nfe_backward)


def fastest_of_rounds(cases: Mapping[Hashable, Callable[[], Measurement]], *,
                      rounds: int = 5) -> dict:
    """Each case's fastest measurement, over rounds that each run every case once.

    A shared or virtual machine has slow spells in which even the processor time of one thread
    grows (time the host takes away is counted as the thread's). Repeats run back to back fall
    into the same spell; interleaved, one round per pass over all the cases, each case's repeats
    are spread over the whole sweep, and its fastest round escapes the spells.

    **Arguments:**

    - `cases`: a key (e.g. ``(method, width)``) to a function of no arguments that measures
      once, e.g. ``functools.partial(measure, method, func, y0, t, loss, repeats=1)``.
    - `rounds`: how many passes over all the cases.

    **Returns:** a ``dict`` from each key to the :class:`Measurement` with the least processor
    time ``cpu`` over the rounds.

    Introduced in the chapter "Choosing a gradient method, by measurement".
    """
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
    best: dict = {}
    for _ in range(rounds):
        for key, run in cases.items():
            r = run()
            if not isinstance(r, Measurement):
                raise TypeError(f"cases[{key!r}] must return a Measurement, got {type(r).__name__}")
            if key not in best or r.cpu < best[key].cpu:
                best[key] = r
    return best


def format_table(header: Sequence[str], rows: Sequence[Sequence], width: int = 68) -> str:
    """Rows of numbers and words as a right-aligned text table no wider than ``width``.

    Floats are written with 3 significant digits (``1.23e-05`` style below 0.01 or from 1e5
    on), ints as they are, anything else with ``str``.

    **Arguments:**

    - `header`: the column titles.
    - `rows`: sequences as long as ``header``.
    - `width`: the widest a line may be; a wider table raises ``ValueError``.

    **Returns:** the table as one string of lines.

    Introduced in the chapter "Choosing a gradient method, by measurement".
    """
    def cell(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return str(v)
        if isinstance(v, int):
            return str(v)
        if math.isnan(v):
            return "-"
        if v != 0 and (abs(v) < 0.01 or abs(v) >= 1e5):
            return f"{v:.2e}"
        return f"{v:.3g}"

    table = [[str(h) for h in header]]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"every row must have {len(header)} entries, got {len(row)}")
        table.append([cell(v) for v in row])
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = [" ".join(s.rjust(w) for s, w in zip(r, widths)) for r in table]
    if max(len(line) for line in lines) > width:
        raise ValueError(f"the table is {max(map(len, lines))} characters wide, more than width={width}")
    return "\n".join(lines)


def with_kinetic_energy(func: Callable) -> Callable:
    """The field on the pair ``(z, e)`` that also integrates the kinetic energy of ``func``.

    ``de/dt`` is the mean over the batch rows of ``|f(t, z)|^2`` (a 1-element tensor), so
    ``e(t1)`` is the regulariser ``∫ |f|^2 dt`` of the chapter, averaged over the batch.

    **Arguments:**

    - `func`: the field ``func(t, z)``, ``z`` of shape ``(batch, d)`` or ``(d,)``.

    **Returns:** a function ``(t, (z, e)) -> (f, de/dt)`` for a tuple state.

    Introduced in the chapter "Choosing a gradient method, by measurement".
    """
    def field(t, state):
        z, _ = state
        f = func(t, z)
        return f, (f**2).sum(-1).mean().reshape(1)

    return field


def nfe_while_training(func: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                       iterations: int, lr: float, kinetic: float = 0.0,
                       solver: Optional[dict] = None) -> tuple:
    """Train ``func`` to map ``x`` to ``y`` over ``t = [0, 1]`` and count each forward solve.

    Adam on the mean squared error of ``z(1)``, plus ``kinetic`` times the kinetic energy
    (:func:`with_kinetic_energy`) when ``kinetic > 0``; backpropagation through
    :func:`helpers.odeint`.

    **Arguments:**

    - `func`: the field, an ``nn.Module`` (trained in place).
    - `x`, `y`: inputs and targets, shape ``(batch, d)``.
    - `iterations`, `lr`: the number of Adam steps and its learning rate.
    - `kinetic`: the weight of the regulariser (0: none).
    - `solver`: keyword arguments for ``odeint`` (``rtol``, ``atol``, ``method``...).

    **Returns:** ``(nfe, losses)``, two lists with one entry per iteration: the forward
    evaluations of the field and the mean squared error (without the regulariser).

    Introduced in the chapter "Choosing a gradient method, by measurement".
    """
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    if kinetic < 0:
        raise ValueError(f"kinetic must be >= 0, got {kinetic}")
    solver = {} if solver is None else dict(solver)
    field = with_kinetic_energy(func)
    t = torch.tensor([0.0, 1.0], dtype=x.dtype)
    optimiser = torch.optim.Adam(func.parameters(), lr=lr)
    nfe, losses = [], []
    for _ in range(iterations):
        stats = SolveStats()
        zs, es = odeint(field, (x, x.new_zeros(1)), t, stats=stats, **solver)
        mse = ((zs[-1] - y) ** 2).mean()
        optimiser.zero_grad()
        (mse + kinetic * es[-1].sum()).backward()
        optimiser.step()
        nfe.append(stats.nfe_forward)
        losses.append(mse.item())
    return nfe, losses
