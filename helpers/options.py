"""Checking the solver settings a user passes, before any work starts.

Every misspelled or out-of-range option is a ``ValueError`` that names it and lists what is
accepted; nothing is silently ignored.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional

from .tableaus import METHODS, ButcherTableau

DEFAULT_METHOD = "dopri5"
DEFAULT_MAX_NUM_STEPS = 10_000  # adaptive methods; fixed-step methods take exactly the steps asked for

FIXED_OPTIONS = ("step_size", "max_num_steps")
ADAPTIVE_OPTIONS = ("first_step", "max_num_steps", "safety", "min_factor", "max_factor", "per_sample_steps")
ADJOINT_ONLY_OPTIONS = ("norm", "checkpoints")
NORMS = ("seminorm", "full")


@dataclass(frozen=True)
class SolverSettings:
    """A method with its checked tolerances and options."""

    tableau: ButcherTableau
    rtol: float
    atol: float
    step_size: Optional[float] = None
    first_step: Optional[float] = None
    max_num_steps: Optional[int] = None
    safety: float = 0.9
    min_factor: float = 0.2
    max_factor: float = 10.0
    norm: str = "full"
    checkpoints: int = 0
    per_sample_steps: bool = False


def resolve_method(method, argument: str = "method") -> ButcherTableau:
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


def make_settings(method, rtol, atol, options, *, argument_prefix: str = "", adjoint: bool = False) -> SolverSettings:
    """Check ``method``, ``rtol``, ``atol`` and ``options`` and bundle them.

    ``argument_prefix`` is ``"adjoint_"`` when checking the backward solve's settings, so that
    messages name the argument the user actually passed.
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
    if kwargs.get("safety", 0.9) >= 1:
        raise ValueError(f"{p}options['safety'] must be below 1, got {kwargs['safety']}")
    if kwargs.get("min_factor", 0.2) >= 1 or kwargs.get("max_factor", 10.0) <= 1:
        raise ValueError(f"{p}options needs min_factor < 1 < max_factor")
    if "norm" in options:
        if options["norm"] not in NORMS:
            raise ValueError(f"{p}options['norm'] must be one of {list(NORMS)}, got {options['norm']!r}")
        kwargs["norm"] = options["norm"]
    elif adjoint and tableau.adaptive:
        kwargs["norm"] = "seminorm"
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
    return SolverSettings(tableau=tableau, rtol=rtol, atol=atol, **kwargs)
