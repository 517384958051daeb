"""Solve statistics: how much work a solve did, forward and backward.

Introduced in the chapter "Neural ODEs and the forward pass"; the backward counts appear in
"The adjoint algorithm".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class SolveStats:
    """Counts filled in by ``odeint`` and ``odeint_adjoint``.

    The forward counts are final when the solve returns. For ``odeint_adjoint`` the backward
    counts are filled in when the backward pass (``loss.backward()``) has run; for ``odeint``
    the backward pass backpropagates through the recorded forward evaluations and solves
    nothing, so its backward counts stay zero.

    **Fields:** `method`; `nfe_forward`, `nfe_backward` (evaluations of ``func`` and, backward,
    of the augmented dynamics, each of which costs one evaluation of ``func`` and one
    vector–Jacobian product); `steps_accepted_forward`, `steps_rejected_forward` and the
    same backward.
    """

    method: str = ""
    nfe_forward: int = 0
    nfe_backward: int = 0
    steps_accepted_forward: int = 0
    steps_rejected_forward: int = 0
    steps_accepted_backward: int = 0
    steps_rejected_backward: int = 0

    def __str__(self) -> str:
        return (
            f"NFE forward {self.nfe_forward}, backward {self.nfe_backward}; "
            f"steps forward {self.steps_accepted_forward} accepted, {self.steps_rejected_forward} rejected; "
            f"backward {self.steps_accepted_backward} accepted, {self.steps_rejected_backward} rejected"
        )


@dataclass
class StepCounter:
    """What one call of the integration loop did (added into a SolveStats afterwards)."""

    nfe: int = 0
    accepted: int = 0
    rejected: int = 0


_last: Optional[SolveStats] = None


def last_stats() -> Optional[SolveStats]:
    """The statistics of the most recent ``odeint`` or ``odeint_adjoint`` call.

    **Returns:** the :class:`SolveStats` of that call (its backward counts appear once its
    backward pass has run), or ``None`` before the first solve.
    """
    return _last


def _set_last(stats: SolveStats) -> None:
    global _last
    _last = stats
