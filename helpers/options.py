"""Checking the solver settings a user passes, before any work starts.

Every misspelled or out-of-range option is a ``ValueError`` that names it and lists what is
accepted; nothing is silently ignored.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

from .tableaus import METHODS, ButcherTableau

DEFAULT_METHOD = "dopri5"
DEFAULT_MAX_NUM_STEPS = 10_000  # adaptive methods; fixed-step methods take exactly the steps asked for

FIXED_OPTIONS = ("step_size", "max_num_steps", "grid_constructor", "perturb", "interp")
# how a fixed-step method's state is interpolated inside a step (for locating an event)
INTERPS = ("cubic", "linear")
ADAPTIVE_OPTIONS = ("first_step", "max_num_steps", "safety", "min_factor", "max_factor", "per_sample_steps",
                    "min_step", "max_step", "norm", "step_t", "jump_t", "grid_points", "ifactor", "dfactor")
# torchdiffeq's names for the step-size factor bounds
_FACTOR_ALIASES = {"ifactor": "max_factor", "dfactor": "min_factor"}
ADJOINT_ONLY_OPTIONS = ("norm", "checkpoints")
NORMS = ("seminorm", "full")
# options that only the shared-step loops of helpers.solve implement
_NOT_PER_SAMPLE = ("min_step", "max_step", "norm", "step_t", "jump_t", "grid_points")


@dataclass(frozen=True)
class SolverSettings:
    """A method with its checked tolerances and options.

    Used in the chapter "Neural ODEs and the forward pass".
    """

    tableau: ButcherTableau
    rtol: float
    atol: float
    step_size: Optional[float] = None
    first_step: Optional[float] = None
    max_num_steps: Optional[int] = None
    safety: float = 0.9
    min_factor: float = 0.2
    max_factor: float = 10.0
    norm: Union[str, Callable] = "full"
    checkpoints: int = 0
    per_sample_steps: bool = False
    min_step: float = 0.0
    max_step: float = math.inf
    step_t: Tuple[float, ...] = ()
    jump_t: Tuple[float, ...] = ()
    grid_constructor: Optional[Callable] = None
    perturb: bool = False
    interp: str = "cubic"


def resolve_method(method, argument: str = "method") -> ButcherTableau:
    """The Butcher tableau a ``method`` name stands for (``None``: the default, dopri5).

    **Arguments:**

    - `method`: a method name, one of the keys of ``METHODS``, or ``None``.
    - `argument`: the argument's name, for the error messages.

    **Returns:** the :class:`ButcherTableau`; a name that is not a string is a ``TypeError``,
    an unknown name a ``ValueError``.

    Used in the chapter "Neural ODEs and the forward pass".
    """
    if method is None:
        method = DEFAULT_METHOD
    if not isinstance(method, str):
        raise TypeError(f"{argument} must be a string naming a method, one of {sorted(METHODS)}; got {type(method).__name__}")
    if method not in METHODS:
        raise ValueError(f"{argument}={method!r} is not a known method; choose one of {sorted(METHODS)}")
    return METHODS[method]


def _positive_float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number, got {value!r}")
    value = float(value)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return value


def _tolerance(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a non-negative number, got {value!r}")
    value = float(value)
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    return value


def _times(value, name: str) -> Tuple[float, ...]:
    """A 1-D tensor or sequence of finite times, as sorted floats."""
    try:
        import torch
        if isinstance(value, torch.Tensor):
            if value.dim() != 1 or value.requires_grad:
                raise ValueError(f"{name} must be a 1-D tensor of times that does not require grad")
            values = value.tolist()
        else:
            values = [float(x) for x in value]
    except TypeError:
        raise TypeError(f"{name} must be a 1-D tensor or a sequence of times, got {type(value).__name__}") from None
    if not all(math.isfinite(x) for x in values):
        raise ValueError(f"{name} must hold finite times")
    return tuple(sorted(set(values)))


def make_settings(method, rtol, atol, options, *, argument_prefix: str = "", adjoint: bool = False) -> SolverSettings:
    """Check ``method``, ``rtol``, ``atol`` and ``options`` and bundle them.

    ``argument_prefix`` is ``"adjoint_"`` when checking the backward solve's settings, so that
    messages name the argument the user actually passed.

    Used in the chapter "Neural ODEs and the forward pass".
    """
    p = argument_prefix
    tableau = resolve_method(method, f"{p}method")
    rtol = _tolerance(rtol, f"{p}rtol")
    atol = _tolerance(atol, f"{p}atol")
    if tableau.adaptive and rtol == 0 and atol == 0:
        raise ValueError(f"{p}rtol and {p}atol cannot both be zero for the adaptive method {tableau.name!r}")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise TypeError(f"{p}options must be a dict or None, got {type(options).__name__}")
    allowed = FIXED_OPTIONS if not tableau.adaptive else ADAPTIVE_OPTIONS
    if adjoint:
        allowed = allowed + ADJOINT_ONLY_OPTIONS
    unknown = [k for k in options if k not in allowed]
    if unknown:
        hint = ""
        if any(k in ADJOINT_ONLY_OPTIONS for k in unknown) and not adjoint:
            hint = " ('norm' belongs in adjoint_options of odeint_adjoint)"
        elif "step_size" in unknown:
            fixed = ", ".join(sorted(name for name, tab in METHODS.items() if not tab.adaptive))
            hint = f" (step_size is for the fixed-step methods {fixed}; adaptive methods take first_step)"
        raise ValueError(
            f"{p}options has unknown key(s) {unknown} for method {tableau.name!r}; "
            f"accepted keys are {list(allowed)}{hint}"
        )
    kwargs = {}
    if options.get("step_size") is not None:
        kwargs["step_size"] = _positive_float(options["step_size"], f"{p}options['step_size']")
    if options.get("first_step") is not None:
        kwargs["first_step"] = _positive_float(options["first_step"], f"{p}options['first_step']")
    max_steps = options.get("max_num_steps", DEFAULT_MAX_NUM_STEPS if tableau.adaptive else None)
    if max_steps is not None:
        if isinstance(max_steps, bool) or not isinstance(max_steps, numbers.Integral) or max_steps < 1:
            raise ValueError(f"{p}options['max_num_steps'] must be a positive integer, got {max_steps!r}")
        kwargs["max_num_steps"] = int(max_steps)
    for key in ("safety", "min_factor", "max_factor"):
        if key in options:
            kwargs[key] = _positive_float(options[key], f"{p}options[{key!r}]")
    for alias, key in _FACTOR_ALIASES.items():
        if alias in options:
            if key in options:
                raise ValueError(f"{p}options: {alias!r} is torchdiffeq's name for {key!r}; give one of them")
            kwargs[key] = _positive_float(options[alias], f"{p}options[{alias!r}]")
    if kwargs.get("safety", 0.9) >= 1:
        raise ValueError(f"{p}options['safety'] must be below 1, got {kwargs['safety']}")
    if kwargs.get("min_factor", 0.2) >= 1 or kwargs.get("max_factor", 10.0) <= 1:
        raise ValueError(f"{p}options needs min_factor < 1 < max_factor")
    if "norm" in options:
        norm = options["norm"]
        if adjoint and not callable(norm) and norm not in NORMS:
            raise ValueError(f"{p}options['norm'] must be one of {list(NORMS)} or a callable, got {norm!r}")
        if not adjoint and not callable(norm):
            raise ValueError(
                f"{p}options['norm']={norm!r}: options['norm'] must be a callable taking the scaled error "
                "tensor ('seminorm' and 'full' belong in adjoint_options of odeint_adjoint)"
            )
        kwargs["norm"] = norm
    elif adjoint and tableau.adaptive:
        kwargs["norm"] = "seminorm"
    if options.get("min_step") is not None:
        kwargs["min_step"] = _tolerance(options["min_step"], f"{p}options['min_step']")
    if options.get("max_step") is not None:
        max_step = options["max_step"]
        if isinstance(max_step, bool) or not isinstance(max_step, numbers.Real) or not max_step > 0:
            raise ValueError(f"{p}options['max_step'] must be a positive number (inf allowed), got {max_step!r}")
        kwargs["max_step"] = float(max_step)
    if kwargs.get("min_step", 0.0) > kwargs.get("max_step", math.inf):
        raise ValueError(f"{p}options needs min_step <= max_step, got {kwargs['min_step']} and {kwargs['max_step']}")
    if "grid_points" in options and "step_t" in options:
        raise ValueError(f"{p}options: 'grid_points' is the old name of 'step_t'; give one of them")
    for key, field in (("step_t", "step_t"), ("grid_points", "step_t"), ("jump_t", "jump_t")):
        if options.get(key) is not None:
            kwargs[field] = _times(options[key], f"{p}options[{key!r}]")
    if set(kwargs.get("step_t", ())) & set(kwargs.get("jump_t", ())):
        raise ValueError(f"{p}options: step_t and jump_t must not share a time")
    if options.get("grid_constructor") is not None:
        if not callable(options["grid_constructor"]):
            raise TypeError(f"{p}options['grid_constructor'] must be callable as grid_constructor(func, y0, t)")
        if options.get("step_size") is not None:
            raise ValueError(f"{p}options: step_size and grid_constructor exclude each other; give one")
        kwargs["grid_constructor"] = options["grid_constructor"]
    if "perturb" in options:
        if not isinstance(options["perturb"], bool):
            raise TypeError(f"{p}options['perturb'] must be True or False, got {options['perturb']!r}")
        kwargs["perturb"] = options["perturb"]
    if "interp" in options:
        if options["interp"] not in INTERPS:
            raise ValueError(f"{p}options['interp'] must be one of {list(INTERPS)}, got {options['interp']!r}")
        kwargs["interp"] = options["interp"]
    if "checkpoints" in options:
        k = options["checkpoints"]
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
            raise ValueError(f"{p}options['checkpoints'] must be a non-negative integer, got {k!r}")
        kwargs["checkpoints"] = int(k)
    if "per_sample_steps" in options:
        flag = options["per_sample_steps"]
        if not isinstance(flag, bool):
            raise TypeError(f"{p}options['per_sample_steps'] must be True or False, got {flag!r}")
        kwargs["per_sample_steps"] = flag
        given = [k for k in _NOT_PER_SAMPLE if options.get(k) is not None and not (k == "norm" and adjoint
                                                                                 and options[k] in NORMS)]
        if flag and given:
            raise ValueError(f"{p}options['per_sample_steps']=True cannot be combined with {given} (yet)")
    return SolverSettings(tableau=tableau, rtol=rtol, atol=atol, **kwargs)
