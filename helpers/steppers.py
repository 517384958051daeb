"""Steppers: one Runge–Kutta step and its error ratio, run eagerly or compiled with ``torch.compile``.

The integration loops in :mod:`helpers.solve` only decide *which* step to take (where to stop,
whether to accept); a stepper *takes* it. A stepper is called as ``stepper(t, y, h, k1)`` and
returns ``(y_new, ks, ratio, nfe)``: the new state, the stage derivatives (for dense output and
FSAL), the error ratio as a 0-d tensor (``None`` for fixed-step methods; ≤ 1 accepts) and the
number of evaluations made.

- :class:`EagerStepper` runs :func:`helpers.runge_kutta.rk_step` op by op.
- :func:`compiled_stepper` hands the same ``rk_step``, the error ratio and, for the adjoint's
  backward solve, the augmented dynamics with their vector–Jacobian product, to ``torch.compile``
  as one function: all stages, the error estimate and the state update become one graph. Python
  keeps only the decision to accept or reject a step, which reads the ratio (one number per step).
  Fixed-step methods accept every step, so their compiled stepper also offers
  :meth:`CompiledStepper.chain`: ``CHAIN_LENGTH`` steps in one compiled call, and, on the CPU
  where nothing needs a gradient (both solves of the adjoint), :meth:`CompiledStepper.loop`:
  all the steps between two requested times in one compiled call, a ``while_loop`` whose
  count is a tensor, so that one graph serves every interval.

The compiled functions are cached per method, tolerances and mode, so a training loop compiles on
its first iteration and never again while shapes stay the same. Steps and times are passed as
tensors, never as Python floats, because ``torch.compile`` would specialise on each float value.

Introduced in the chapter "Training a Neural ODE with the adjoint" (the compiled mode); the
step itself in "Neural ODEs and the forward pass".
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from .rational_tanh import RationalTanhPass
from .runge_kutta import rk_step
from .tableaus import ButcherTableau

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# Each (method, tolerances, seminorm size) is its own compiled function but shares code with the
# others, and torch.compile keeps only 8 variants of one code object by default.
RECOMPILE_LIMIT = 64


def resolve_compile(compiled) -> Optional[str]:
    """Check the ``compiled`` argument: ``False``/``None`` (eager), ``True`` or a ``torch.compile`` mode.

    **Returns:** ``None`` for eager execution, otherwise the ``torch.compile`` mode
    (``True`` means ``"default"``).

    Introduced in the chapter "Training a Neural ODE with the adjoint".
    """
    if compiled is None or compiled is False:
        return None
    if compiled is True:
        return "default"
    if isinstance(compiled, str):
        if compiled not in COMPILE_MODES:
            raise ValueError(f"compiled={compiled!r} is not a torch.compile mode; use True, False or one of {list(COMPILE_MODES)}")
        return compiled
    raise TypeError(f"compiled must be True, False or a torch.compile mode string {list(COMPILE_MODES)}, got {type(compiled).__name__}")


def error_ratio(error: torch.Tensor, y: torch.Tensor, y_new: torch.Tensor, rtol: float, atol: float,
                error_numel: Optional[int] = None, norm: Optional[Callable] = None) -> torch.Tensor:
    """The root-mean-square of the local error measured against ``atol + rtol·max(|y|, |y_new|)``.

    ``error_numel``: if given, only the first ``error_numel`` entries of the flattened state count
    (the adjoint's seminorm). ``norm``: a callable to use instead of the root-mean-square, applied
    to the scaled error ``error / (atol + rtol·max(|y|, |y_new|))`` (torchdiffeq's ``norm``
    option). Step control is not differentiated, so the inputs are detached.

    Introduced in the chapter "Neural ODEs and the forward pass".
    """
    error, y, y_new = error.detach(), y.detach(), y_new.detach()
    if error_numel is not None:
        error, y, y_new = (x.reshape(-1)[:error_numel] for x in (error, y, y_new))
    scale = torch.maximum(y.abs(), y_new.abs()) * rtol + atol
    if norm is not None:
        return torch.as_tensor(norm(error / scale), device=error.device).detach().abs()
    return torch.linalg.vector_norm(error / scale) / math.sqrt(max(error.numel(), 1))


def _take_step(func, tableau, rtol, atol, error_numel, t, y, h, k1, perturb=(False, False), norm=None):
    y_new, ks, error, _ = rk_step(func, tableau, t, y, h, k1, perturb)
    ratio = None if error is None else error_ratio(error, y, y_new, rtol, atol, error_numel, norm)
    if ratio is not None and tableau.fsal and tableau.b_err[-1] == 0.0:
        # the FSAL stage (f at the new state) is not in the error estimate, yet the next step
        # starts from it: a nan/inf there rejects this step, without a synchronisation
        last = ks[-1].detach()
        if error_numel is not None:
            last = last.reshape(-1)[:error_numel]
        ratio = torch.where(torch.isfinite(last).all(), ratio, torch.full_like(ratio, math.inf))
    return y_new, ks, ratio


class EagerStepper:
    """A Runge–Kutta step run op by op (the default).

    **Arguments:** `func` (the vector field), `tableau`, `rtol`, `atol`, `error_numel` (the
    seminorm's size, or ``None``) and `norm` (a callable error norm, or ``None`` for the RMS).
    Called with ``perturb=(after_start, before_end)`` it nudges stage times as
    :func:`helpers.runge_kutta.rk_step` describes.

    Used in the chapter "Neural ODEs and the forward pass".
    """

    def __init__(self, func: Callable, tableau: ButcherTableau, rtol: float, atol: float,
                 error_numel: Optional[int] = None, norm: Optional[Callable] = None):
        self.func, self.tableau, self.rtol, self.atol, self.error_numel = func, tableau, rtol, atol, error_numel
        self.norm = norm

    def __call__(self, t, y, h, k1=None, perturb=(False, False)):
        y_new, ks, ratio = _take_step(self.func, self.tableau, self.rtol, self.atol, self.error_numel, t, y, h, k1,
                                      perturb, self.norm)
        return y_new, ks, ratio, self.tableau.stages - (k1 is not None)


def augmented_field(func: Callable, params: Sequence[torch.Tensor], shape: torch.Size,
                    names: Optional[Tuple[str, ...]] = None) -> Callable:
    """The adjoint's backward dynamics on the flat state ``[z, λ, a_θ]``, written with ``torch.func``.

    The same mathematics as :class:`helpers.AugmentedDynamics` (``dz/dt = f``, ``dλ/dt = -λ ∂f/∂z``,
    ``da_θ/dt = -λ ∂f/∂θ``, one vector–Jacobian product per call), in a form ``torch.compile``
    traces without a graph break. ``params`` are tensors that ``func`` uses (its parameters, or
    tensors it closes over); ``func`` is called with them substituted. ``names``: where ``params``
    live in ``func`` (found with :func:`parameter_names` if not given).

    Used in the chapter "The problem".
    """
    n = shape.numel()
    named = parameter_names(func, params) if names is None else names

    def field(t, state):
        z, lam = state[:n].view(shape), state[n:2 * n].view(shape)

        def f_of(z, *ps):
            if named is None:
                return func(t, z)
            return torch.func.functional_call(func, dict(zip(named, ps)), (t, z), strict=False)

        f, pullback = torch.func.vjp(f_of, z, *(params if named is not None else ()))
        vjps = pullback(-lam)
        return torch.cat([f.reshape(-1)] + [g.reshape(-1).to(state.dtype) for g in vjps])

    return field


def parameter_names(func, params) -> Optional[Tuple[str, ...]]:
    """The names under which ``params`` live in ``func`` (an ``nn.Module``), or ``None`` if there are none.

    Used in the chapter "The problem".
    """
    if not params:
        return None
    if not isinstance(func, torch.nn.Module):
        raise ValueError(
            "compiled=True with odeint_adjoint needs func to be an nn.Module whose parameters are the "
            "adjoint_params (torch.func substitutes them by name); wrap the function in an nn.Module"
        )
    names = {id(p): name for name, p in func.named_parameters()}
    missing = [i for i, p in enumerate(params) if id(p) not in names]
    if missing:
        raise ValueError(
            f"compiled=True with odeint_adjoint: adjoint_params[{missing[0]}] is not a parameter of func; "
            "with the compiled mode every adjoint parameter must be registered in func (an nn.Module)"
        )
    return tuple(names[id(p)] for p in params)


_CACHE: Dict[tuple, Callable] = {}

# Fixed-step solvers run this many steps per compiled call (the rest one at a time): entering
# compiled code and the Python loop around it cost ~60 µs a call on the book's CPU benchmark.
# Measured there over 100 rk4 steps, 5 steps a call took the forward solve from 38 to 23 ms and
# the adjoint's backward from 31 to 23 ms; 10 gained little more and compiled the backward
# chain in 42 s instead of 26 s.
CHAIN_LENGTH = 5


def compile_options(mode: str, device_type: str = "cpu") -> dict:
    """The inductor options for a ``torch.compile`` ``mode`` on ``device_type`` ("cpu", "cuda", ...).

    On the CPU two options are added, both measured on a step of the book's benchmark problem:

    - ``cpp_wrapper``: the generated code calls its kernels from C++ instead of Python, which took
      about 13% off a compiled rk4 step and 22% off the adjoint's backward step;
    - ``cpp.use_decompose_tanh``: tanh through exp and a division, because inductor's vectorised
      tanh is several times slower than that (60 µs against 23 µs on a 256×64 float32 tensor);
    - ``post_grad_custom_pre_pass``: :class:`helpers.rational_tanh.RationalTanhPass`, which
      replaces float32 tanh by a rational function (several multiply-adds and one division, as
      XLA evaluates it), cheaper still than the exponential form and as accurate.

    Where the whole-solve loops run (the CPU, torch ``WHILE_LOOP_SINCE`` on), torch's ``while_loop`` op is
    marked cacheable (``unsafe_marked_cacheable_functions``), so that inductor's on-disk cache
    serves those loops in a later process: torch leaves higher-order ops out of that cache by
    default, and a warm first call of the adjoint's dopri5 solve took 24 s with them left out
    against 10 s marked. The cache key still holds the loop body's code: a body whose tanh was
    swapped for a sigmoid missed the cache, compiled anew and matched the eager gradient.

    Introduced in the chapter "Training a Neural ODE with the adjoint".
    """
    from torch._inductor import list_mode_options  # here: importing inductor takes a while

    options = dict(list_mode_options(mode))
    if device_type == "cpu":
        options.update({"cpp_wrapper": True, "cpp.use_decompose_tanh": True})
        if RationalTanhPass is not None:
            options["post_grad_custom_pre_pass"] = RationalTanhPass()
        loop = _while_loop_op()  # the whole-solve loops run on the CPU only
        if loop is not None:
            name = f"{loop.__module__}.{loop.__name__}"  # what HigherOrderOperator.cacheable looks up
            options["unsafe_marked_cacheable_functions"] = {name: torch.__version__}
    return options


def _compiled(key: tuple, body: Callable, mode: str, device_type: str) -> Callable:
    fn = _CACHE.get(key)
    if fn is None:
        dynamo_config = torch._dynamo.config
        if getattr(dynamo_config, "recompile_limit", RECOMPILE_LIMIT) < RECOMPILE_LIMIT:
            dynamo_config.recompile_limit = RECOMPILE_LIMIT
        fn = torch.compile(body, options=compile_options(mode, device_type), dynamic=False)
        _CACHE[key] = fn
    return fn


def _forward_body(tableau, rtol, atol, error_numel):
    def step(func, t, y, h, k1):
        return _take_step(func, tableau, rtol, atol, error_numel, t, y, h, k1)
    return step


def _forward_chain_body(tableau, length):
    def chain(func, ts, y, h):
        for i in range(length):
            y = rk_step(func, tableau, ts[i], y, h, None)[0]
        return y
    return chain


def _adjoint_chain_body(tableau, length, shape, names):
    def chain(func, params, ts, y, h):
        field = augmented_field(func, params, shape, names)
        for i in range(length):
            y = rk_step(field, tableau, ts[i], y, h, None)[0]
        return y
    return chain


# The oldest torch whose inductor compiled these loops in the tests (2.13). Colab's 2.9 has the
# op, but its CPU lowering failed on the adaptive loop (LoweringException: Pointwise); there the
# compiled mode keeps a call per step, or per CHAIN_LENGTH steps.
WHILE_LOOP_SINCE = (2, 13)


def _while_loop_op():
    """The ``while_loop`` operator object, where the whole-solve loops use it and inductor's
    configuration can mark it cacheable; else ``None``."""
    if _while_loop() is None:
        return None
    try:
        from torch._higher_order_ops.while_loop import while_loop_op
        from torch._inductor import config
    except ImportError:  # pragma: no cover - depends on torch's internals
        return None
    return while_loop_op if hasattr(config, "unsafe_marked_cacheable_functions") else None


def _while_loop():
    """torch's ``while_loop`` higher-order op, or ``None`` where this torch cannot compile it."""
    version = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    if version < WHILE_LOOP_SINCE:
        return None
    try:
        from torch._higher_order_ops.while_loop import while_loop
    except ImportError:  # pragma: no cover - present since torch 2.3
        return None
    return while_loop


def _steps_loop(field_of, tableau):
    # n steps of size h from `start`: the i-th at start + i·h, formed as the eager loop forms
    # it (the offset i·h in float64, then added in the time's dtype). n is a tensor, so the
    # graph does not depend on it: one compilation serves intervals of any number of steps.
    while_loop = _while_loop()

    def loop(func, extra, start, y, h, h64, n):
        field = field_of(func, extra)

        def more(i, y):
            return i < n

        def step(i, y):
            t = start + (i.to(h64.dtype) * h64).to(start.dtype)
            return i + 1, rk_step(field, tableau, t, y, h, None)[0]

        first = torch.zeros((), dtype=torch.int64, device=y.device)
        return while_loop(more, step, (first, y))[1]
    return loop


def _field_of_forward(func, extra):
    return func


def _field_of_adjoint(shape, names):
    def field_of(func, params):
        return augmented_field(func, params, shape, names)
    return field_of


def _forward_loop_body(tableau):
    return _steps_loop(_field_of_forward, tableau)


def _adjoint_loop_body(tableau, shape, names):
    return _steps_loop(_field_of_adjoint(shape, names), tableau)


def _adjoint_body(tableau, rtol, atol, error_numel, shape, names):
    def step(func, params, t, y, h, k1):
        field = augmented_field(func, params, shape, names)
        return _take_step(field, tableau, rtol, atol, error_numel, t, y, h, k1)
    return step


class CompiledStepper:
    """A Runge–Kutta step compiled by ``torch.compile``; see :func:`compiled_stepper`.

    Fixed-step methods also get :meth:`chain`, ``chain_length`` steps in one compiled call, and
    on the CPU :meth:`loop`, any number of steps in one compiled call (``loops`` is then true).

    Introduced in the chapter "Training a Neural ODE with the adjoint".
    """

    def __init__(self, fn: Callable, args: tuple, tableau: ButcherTableau, cuda_graphs: bool = False,
                 chain_fn: Optional[Callable] = None, chain_length: Optional[int] = None,
                 loop_fn: Optional[Callable] = None, loop_spec: Optional[dict] = None):
        self.fn, self.args, self.tableau, self.cuda_graphs = fn, args, tableau, cuda_graphs
        self.chain_fn, self.chain_length, self.loop_fn = chain_fn, chain_length, loop_fn
        # what helpers.adaptive_loop needs to compile a whole adaptive solve (None: not here)
        self.loop_spec = loop_spec
        self.loops = loop_fn is not None or loop_spec is not None

    def loop(self, start: torch.Tensor, y: torch.Tensor, h: float, n: int) -> Tuple[torch.Tensor, int]:
        """Take ``n`` steps of size ``h`` from ``y`` at time ``start``, in one compiled call.

        For solves that need no gradient (the compiled ``while_loop`` is not differentiated):
        the adjoint's forward and backward solves.

        **Returns:** the new state and the number of evaluations made.
        """
        h_t = torch.tensor(h, dtype=start.dtype, device=start.device)
        h64 = torch.tensor(h, dtype=torch.float64, device=start.device)
        count = torch.tensor(n, dtype=torch.int64, device=start.device)
        extra = self.args[1] if len(self.args) > 1 else ()
        y_new = self.loop_fn(self.args[0], extra, start, y, h_t, h64, count)
        return y_new, n * self.tableau.stages

    def chain(self, ts: torch.Tensor, y: torch.Tensor, h) -> Tuple[torch.Tensor, int]:
        """Take ``chain_length`` steps of size ``h`` from ``y``, the i-th at time ``ts[i]``.

        **Returns:** the new state and the number of evaluations made.
        """
        if not isinstance(h, torch.Tensor):
            h = torch.tensor(h, dtype=ts.dtype, device=ts.device)
        y_new = self.chain_fn(*self.args, ts, y, h)
        if self.cuda_graphs:
            y_new = y_new.clone()
        return y_new, self.chain_length * self.tableau.stages

    def __call__(self, t, y, h, k1=None):
        if not isinstance(h, torch.Tensor):
            h = torch.tensor(h, dtype=t.dtype, device=t.device)
        y_new, ks, ratio = self.fn(*self.args, t, y, h, k1)
        if self.cuda_graphs:
            # a CUDA graph's outputs live in its own memory, overwritten by its next replay; the
            # solver keeps states and stages across steps, so it takes copies
            y_new, ks = y_new.clone(), tuple(k.clone() for k in ks)
            ratio = None if ratio is None else ratio.clone()
        return y_new, ks, ratio, self.tableau.stages - (k1 is not None)


def compiled_stepper(func: Callable, tableau: ButcherTableau, rtol: float, atol: float, mode: str,
                     error_numel: Optional[int] = None, adjoint_of: Optional[tuple] = None,
                     device_type: str = "cpu") -> CompiledStepper:
    """A stepper whose whole step (stages, error estimate, update) is one ``torch.compile`` graph.

    **Arguments:**

    - `func`: the user's vector field ``func(t, z)``.
    - `tableau`, `rtol`, `atol`, `error_numel`: as for :class:`EagerStepper`.
    - `mode`: the ``torch.compile`` mode.
    - `device_type`: where the state lives (``"cpu"``, ``"cuda"``...), which picks the options of
      :func:`compile_options`.
    - `adjoint_of`: ``(params, shape)`` to step the adjoint's augmented state ``[z, λ, a_θ]``
      instead of ``z`` (see :func:`augmented_field`).

    **Returns:** a callable ``stepper(t, y, h, k1) -> (y_new, ks, ratio, nfe)``.

    Introduced in the chapter "Training a Neural ODE with the adjoint".
    """
    chain = None if tableau.adaptive else CHAIN_LENGTH
    chain_fn = loop_fn = None
    # whole solves in one call: on the CPU only (a CUDA graph cannot hold a loop whose count is
    # read on the host, and there it is untested)
    loops = device_type == "cpu" and _while_loop() is not None
    spec = dict(rtol=rtol, atol=atol, error_numel=error_numel, mode=mode, device_type=device_type)
    if adjoint_of is None:
        key = ("forward", tableau.name, rtol, atol, error_numel, mode, device_type)
        fn = _compiled(key, _forward_body(tableau, rtol, atol, error_numel), mode, device_type)
        if chain:
            chain_fn = _compiled(("forward chain", tableau.name, chain, mode, device_type),
                                 _forward_chain_body(tableau, chain), mode, device_type)
        if loops and chain:
            loop_fn = _compiled(("forward loop", tableau.name, mode, device_type),
                                _forward_loop_body(tableau), mode, device_type)
        spec.update(key=("forward",), field_of=_field_of_forward)
        return CompiledStepper(fn, (func,), tableau, _uses_cuda_graphs(mode), chain_fn, chain, loop_fn,
                               spec if loops and not chain else None)
    params, shape = adjoint_of
    names = parameter_names(func, params)
    key = ("adjoint", tableau.name, rtol, atol, error_numel, tuple(shape), names, mode, device_type)
    fn = _compiled(key, _adjoint_body(tableau, rtol, atol, error_numel, torch.Size(shape), names), mode,
                   device_type)
    if chain:
        chain_fn = _compiled(("adjoint chain", tableau.name, chain, tuple(shape), names, mode, device_type),
                             _adjoint_chain_body(tableau, chain, torch.Size(shape), names), mode, device_type)
    if loops and chain:
        loop_fn = _compiled(("adjoint loop", tableau.name, tuple(shape), names, mode, device_type),
                            _adjoint_loop_body(tableau, torch.Size(shape), names), mode, device_type)
    spec.update(key=("adjoint", tuple(shape), names),
                field_of=_field_of_adjoint(torch.Size(shape), names))
    return CompiledStepper(fn, (func, tuple(params)), tableau, _uses_cuda_graphs(mode), chain_fn, chain,
                           loop_fn, spec if loops and not chain else None)


def _uses_cuda_graphs(mode: str) -> bool:
    return mode in ("reduce-overhead", "max-autotune")
