"""Solve statistics: how much work a solve did, forward and backward.

Introduced in the chapter "Neural ODEs and the forward pass"; the backward counts appear in
"The adjoint algorithm".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch


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

    With ``options={"per_sample_steps": True}`` (chapter "Appendix: measured performance"),
    `per_sample_steps` is True, the NFE still count calls of ``func`` (each on the rows still
    being integrated), the step counts are summed over the samples, and these fields are filled
    in: `sample_evals_forward`, `sample_evals_backward` (Σ over calls of the number of rows
    evaluated: the work actually done), `sample_steps_median_forward`,
    `sample_steps_slowest_forward` and the same backward (accepted steps of the median sample,
    the lower median for an even batch, and of the sample that took the most; summed over the
    solves that share this object, like the other counts).

    Two methods of computing the gradient add their own counts (chapter "Choosing a gradient
    method, by measurement"): the interpolating adjoint (``adjoint_options=dict(reconstruct=
    "interpolate")``) fills in `dense_steps` and `dense_bytes` (the forward steps whose dense
    output it keeps, and the bytes they take); forward sensitivity (``gradient="forward"``)
    fills in `sensitivity_directions` (d + p, the columns of the sensitivity carried along),
    `jvps_forward` (Jacobian–vector products: evaluations of the sensitivity field times the
    directions) and `sensitivity_bytes` (the sensitivities kept at the requested times).

    Introduced in the chapter "Neural ODEs and the forward pass".
    """

    method: str = ""
    nfe_forward: int = 0
    nfe_backward: int = 0
    steps_accepted_forward: int = 0
    steps_rejected_forward: int = 0
    steps_accepted_backward: int = 0
    steps_rejected_backward: int = 0
    per_sample_steps: bool = False
    sample_evals_forward: int = 0
    sample_evals_backward: int = 0
    sample_steps_median_forward: int = 0
    sample_steps_slowest_forward: int = 0
    sample_steps_median_backward: int = 0
    sample_steps_slowest_backward: int = 0
    dense_steps: int = 0
    dense_bytes: int = 0
    sensitivity_directions: int = 0
    jvps_forward: int = 0
    sensitivity_bytes: int = 0

    def __str__(self) -> str:
        text = (
            f"NFE forward {self.nfe_forward}, backward {self.nfe_backward}; "
            f"steps forward {self.steps_accepted_forward} accepted, {self.steps_rejected_forward} rejected; "
            f"backward {self.steps_accepted_backward} accepted, {self.steps_rejected_backward} rejected"
        )
        if self.per_sample_steps:
            text += (
                f"; per-sample steps: sample-evaluations forward {self.sample_evals_forward}, "
                f"backward {self.sample_evals_backward}; accepted steps per sample forward "
                f"median {self.sample_steps_median_forward}, slowest {self.sample_steps_slowest_forward}; "
                f"backward median {self.sample_steps_median_backward}, slowest {self.sample_steps_slowest_backward}"
            )
        if self.dense_steps:
            text += f"; dense output kept for {self.dense_steps} steps, {self.dense_bytes} bytes"
        if self.sensitivity_directions:
            text += (f"; forward sensitivity: {self.sensitivity_directions} directions, "
                     f"{self.jvps_forward} Jacobian-vector products, {self.sensitivity_bytes} bytes kept")
        return text


@dataclass
class StepCounter:
    """What one call of the integration loop did (added into a SolveStats afterwards).

    Used in the chapter "Neural ODEs and the forward pass".
    """

    nfe: int = 0
    accepted: int = 0
    rejected: int = 0
    per_sample: bool = False  # set by the per-sample loops (helpers.per_sample)
    sample_evals: int = 0  # Σ over calls of func of the rows evaluated (per-sample loops)
    sample_steps: Optional[torch.Tensor] = None  # accepted steps of each sample (per-sample loops)

    def add_sample_steps(self, steps: torch.Tensor) -> None:
        """Add one solve's accepted steps per sample (a 1-D integer tensor on the CPU)."""
        self.per_sample = True
        self.sample_steps = steps.clone() if self.sample_steps is None else self.sample_steps + steps

    def add_to(self, stats: "SolveStats", backward: bool = False) -> None:
        """Add these counts into ``stats``, as its forward (default) or backward counts."""
        side = "backward" if backward else "forward"
        for name, value in (("nfe", self.nfe), ("steps_accepted", self.accepted), ("steps_rejected", self.rejected)):
            setattr(stats, f"{name}_{side}", getattr(stats, f"{name}_{side}") + value)
        if self.per_sample:
            stats.per_sample_steps = True
            setattr(stats, f"sample_evals_{side}", getattr(stats, f"sample_evals_{side}") + self.sample_evals)
            if self.sample_steps is not None and self.sample_steps.numel():
                median = int(self.sample_steps.median())
                slowest = int(self.sample_steps.max())
                setattr(stats, f"sample_steps_median_{side}", getattr(stats, f"sample_steps_median_{side}") + median)
                setattr(stats, f"sample_steps_slowest_{side}", getattr(stats, f"sample_steps_slowest_{side}") + slowest)


_last: Optional[SolveStats] = None


def last_stats() -> Optional[SolveStats]:
    """The statistics of the most recent ``odeint`` or ``odeint_adjoint`` call.

    **Returns:** the :class:`SolveStats` of that call (its backward counts appear once its
    backward pass has run), or ``None`` before the first solve.

    Used in the chapter "Neural ODEs and the forward pass".
    """
    return _last


def _set_last(stats: SolveStats) -> None:
    global _last
    _last = stats
