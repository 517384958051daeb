"""helpers: ODE solvers and adjoint gradients in PyTorch, the engine behind the book.

``odeint`` and ``odeint_adjoint`` take torchdiffeq's arguments, so switching is one import.
"""
from .adjoint import AugmentedDynamics, odeint_adjoint
from .errors import SolveError
from .events import odeint_event
from .odeint import odeint
from .stats import SolveStats, last_stats
from .tableaus import METHODS, ButcherTableau

__all__ = [
    "odeint",
    "odeint_adjoint",
    "odeint_event",
    "SolveStats",
    "last_stats",
    "SolveError",
    "ButcherTableau",
    "METHODS",
    "AugmentedDynamics",
]
__version__ = "0.1.0"
