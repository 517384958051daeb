"""Dense output of a whole solve: the forward trajectory z(t) at any time, from the steps it took.

:class:`RecordingStepper` wraps a stepper (see :mod:`helpers.steppers`) and keeps, for every
accepted step, what is needed to interpolate the state inside it; :class:`DenseOutput` holds
those steps and evaluates z(t) anywhere in the span. Each step is stored as the coefficients of

    z(t0 + θh) = y0 + θ (Δ + (1 - θ) (r3 + θ (r4 + (1 - θ) r5))),     θ ∈ [0, 1],

with Δ = y1 - y0, r3 = h f0 - Δ and r4 = Δ - h f1 - r3: with r5 = 0 this is the cubic Hermite
polynomial through the states and the derivatives f0, f1 at both ends; dopri5 adds its own
fourth-order term r5 (Dormand and Prince's continuous extension, as
:func:`helpers.runge_kutta.interpolate`). Methods without a continuous extension of their own
(the fixed-step methods and dopri8) get the cubic Hermite polynomial; for them f1 is the next
step's first stage, and one evaluation of ``func`` at the very end.

Introduced in the chapter "Choosing a gradient method, by measurement".
"""
from __future__ import annotations

import bisect
from typing import Callable, List

import torch

from .runge_kutta import weighted_sum
from .tableaus import DOPRI5_DENSE, ButcherTableau


class DenseOutput:
    """The forward solution as a piecewise polynomial, one piece per accepted step.

    **Arguments:**

    - `starts`: the start time of each step (floats, in the order the solve took them).
    - `sizes`: the signed size of each step.
    - `coefficients`: a tensor of shape ``(steps, k, *shape)`` (k = 4 for the cubic Hermite
      polynomial, 5 with dopri5's extra term): ``y0, Δ, r3, r4[, r5]`` of each step.

    Calling it with a time ``t`` (a float or a 0-d tensor) returns z(t), of shape ``shape``;
    a time outside the span is taken in the nearest step (extrapolated a little).

    Introduced in the chapter "Choosing a gradient method, by measurement".
    """

    def __init__(self, starts: List[float], sizes: List[float], coefficients: torch.Tensor):
        self.starts, self.sizes, self.coefficients = starts, sizes, coefficients
        direction = 1.0 if not sizes or sizes[0] > 0 else -1.0
        self.direction = direction
        self._keys = [direction * s for s in starts]  # increasing

    @property
    def steps(self) -> int:
        """The number of stored steps."""
        return len(self.starts)

    @property
    def nbytes(self) -> int:
        """The memory the stored coefficients take, in bytes."""
        return self.coefficients.numel() * self.coefficients.element_size()

    def __call__(self, t) -> torch.Tensor:
        t_f = float(t)
        i = bisect.bisect_right(self._keys, self.direction * t_f) - 1
        i = min(max(i, 0), len(self._keys) - 1)
        theta = (t_f - self.starts[i]) / self.sizes[i]
        c = self.coefficients[i]
        inner = c[3] if len(c) == 4 else c[3] + (1 - theta) * c[4]
        return c[0] + theta * (c[1] + (1 - theta) * (c[2] + theta * inner))


class RecordingStepper:
    """A stepper that passes every step through and keeps the accepted ones for dense output.

    **Arguments:**

    - `inner`: the stepper that takes the steps, called as ``inner(t, y, h, k1)``.
    - `tableau`: its method (which interpolant to keep).

    A step is accepted when the solve's next step starts from the state it produced (the
    integration loops of :mod:`helpers.solve` pass that very tensor on), or when it is the
    last one; a rejected step is followed by a retry from its own start. Call :meth:`finish`
    after the solve.

    Introduced in the chapter "Choosing a gradient method, by measurement".
    """

    chain_length = None  # one step per call (no chained compiled steps)

    def __init__(self, inner: Callable, tableau: ButcherTableau):
        self.inner, self.tableau = inner, tableau
        self.pending = None
        self.starts: List[float] = []
        self.sizes: List[float] = []
        self.kept: List[list] = []  # per accepted step [y0, y1, f0, f1 or None, r5 or None]

    def __call__(self, t, y, h, k1=None, perturb=None):
        if perturb is not None:
            raise ValueError("options['perturb'] and options['jump_t'] cannot be combined with dense output")
        y_new, ks, ratio, nfe = self.inner(t, y, h, k1)
        if self.pending is not None and self.pending[1] is y:
            self._keep(*self.pending)
        self.pending = (t, y_new, y, h, ks)
        return y_new, ks, ratio, nfe

    def _keep(self, t, y_new, y, h, ks) -> None:
        tab = self.tableau
        h_f = float(h)
        f1 = ks[-1] if tab.fsal else None
        r5 = h_f * weighted_sum(DOPRI5_DENSE, ks) if tab.dense == "dopri5" else None
        if self.kept and self.kept[-1][3] is None:
            self.kept[-1][3] = ks[0]  # the previous step's end derivative: this step's first stage
        self.starts.append(float(t))
        self.sizes.append(h_f)
        self.kept.append([y, y_new, ks[0], f1, r5])

    def finish(self, func: Callable, counter=None) -> DenseOutput:
        """The dense output of the accepted steps (the last call's step is the last accepted one).

        **Arguments:** ``func``, to evaluate the derivative at the very end for a method that is
        not FSAL; ``counter``, a :class:`helpers.stats.StepCounter` that counts that evaluation.

        **Returns:** a :class:`DenseOutput`.
        """
        if self.pending is not None:
            self._keep(*self.pending)
            self.pending = None
        if not self.kept:
            raise ValueError("no step was taken, so there is no dense output")
        last = self.kept[-1]
        if last[3] is None:
            t_end = self.starts[-1] + self.sizes[-1]
            last[3] = func(torch.tensor(t_end, dtype=last[1].dtype, device=last[1].device), last[1])
            if counter is not None:
                counter.nfe += 1
        rows = []
        for (y0, y1, f0, f1, r5), h in zip(self.kept, self.sizes):
            dy = y1 - y0
            r3 = h * f0 - dy
            r4 = dy - h * f1 - r3
            rows.append(torch.stack([y0, dy, r3, r4] + ([] if r5 is None else [r5])))
        self.kept = []
        return DenseOutput(self.starts, self.sizes, torch.stack(rows))
