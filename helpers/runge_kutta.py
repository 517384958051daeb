"""One generic explicit Runge–Kutta step, and dense output inside a step.

Every method in :mod:`helpers.tableaus` runs through :func:`rk_step`. The step size ``h`` may be
a Python float (a step chosen by the controller) or a 0-d tensor (a step whose length depends on
the requested times, so that gradients reach ``t``).

Introduced in the chapter "Neural ODEs and the forward pass".
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch

from .tableaus import DOPRI5_DENSE, ButcherTableau

Step = Union[float, torch.Tensor]


def weighted_sum(weights: Sequence[float], ks: Sequence[torch.Tensor]) -> Optional[torch.Tensor]:
    """Σ w_j k_j over the nonzero weights, or ``None`` when every weight is zero.

    Used in the chapter "Neural ODEs and the forward pass".
    """
    total = None
    for w, k in zip(weights, ks):
        if w == 0.0:
            continue
        total = k * w if total is None else torch.add(total, k, alpha=w)
    return total


def add_step(y: torch.Tensor, h: Step, weights: Sequence[float], ks: Sequence[torch.Tensor]) -> torch.Tensor:
    """y + h Σ w_j k_j.

    With a float ``h`` each term is one fused ``add`` (``alpha = h w_j``): the fewest kernels.
    With a tensor ``h`` (a step that carries gradients to ``t``) the sum is formed first.

    Used in the chapter "Neural ODEs and the forward pass".
    """
    if isinstance(h, torch.Tensor):
        direction = weighted_sum(weights, ks)
        return y if direction is None else y + h * direction
    for w, k in zip(weights, ks):
        if w != 0.0:
            y = torch.add(y, k, alpha=h * w)
    return y


def nudge(t: torch.Tensor, toward) -> torch.Tensor:
    """``t`` moved to the next representable value in the direction of ``toward``.

    The gradient passes straight through (the shift is a constant of one unit in the last place).

    Used in the chapter "Neural ODEs and the forward pass".
    """
    t_detached = t.detach()
    toward = torch.as_tensor(toward, dtype=t.dtype, device=t.device).detach()
    return t + (torch.nextafter(t_detached, toward) - t_detached)


def rk_step(
    func: Callable,
    tableau: ButcherTableau,
    t: torch.Tensor,
    y: torch.Tensor,
    h: Step,
    k1: Optional[torch.Tensor] = None,
    perturb: Tuple[bool, bool] = (False, False),
) -> Tuple[torch.Tensor, List[torch.Tensor], Optional[torch.Tensor], int]:
    """Take one step of an explicit Runge–Kutta method.

    **Arguments:**

    - `func`: the vector field, ``func(t, y) -> dy/dt``.
    - `tableau`: the method.
    - `t`, `y`: the time (0-d tensor) and state at the start of the step.
    - `h`: the signed step size.
    - `k1`: ``func(t, y)`` if already known (the previous step's last stage for FSAL methods).
    - `perturb`: ``(after_start, before_end)``: evaluate the first stage one representable time
      after ``t`` (into the step) and the stages at ``t + h`` one representable time before it,
      so that a ``func`` with a jump at either end sees the side the step lies on
      (torchdiffeq's ``perturb``).

    **Returns:** ``(y_new, ks, error, nfe)``: the new state, the list of stage derivatives
    (for FSAL methods the last is ``func`` at the new state), the local error estimate
    (``None`` for fixed-step methods) and the number of evaluations of ``func`` made.

    Introduced in the chapter "Neural ODEs and the forward pass".
    """
    nfe = 0
    after_start, before_end = perturb
    if k1 is None:
        k1 = func(nudge(t, t + h) if after_start else t, y)
        nfe += 1
    ks = [k1]
    y_new = None
    for i in range(1, tableau.stages):
        y_i = add_step(y, h, tableau.a[i], ks)
        if tableau.fsal and i == tableau.stages - 1:
            y_new = y_i  # the last stage of an FSAL method is taken at the new state
        t_i = t + tableau.c[i] * h
        if before_end and tableau.c[i] == 1.0:
            t_i = nudge(t_i, t)
        ks.append(func(t_i, y_i))
        nfe += 1
    if y_new is None:
        y_new = add_step(y, h, tableau.b, ks)
    error = None
    if tableau.b_err is not None:
        error = weighted_sum(tableau.b_err, ks)
        error = error * h
    return y_new, ks, error, nfe


def interpolate(
    tableau: ButcherTableau,
    y0: torch.Tensor,
    y1: torch.Tensor,
    ks: Sequence[torch.Tensor],
    h: Step,
    theta: Union[float, torch.Tensor],
) -> torch.Tensor:
    """The state at fraction ``theta`` ∈ [0, 1] of an accepted step from ``y0`` to ``y1``.

    ``"hermite"``: the cubic Hermite polynomial through the end states and their derivatives
    (third order, matching bosh3). ``"dopri5"``: Dormand–Prince's fourth-order continuous
    extension.

    Used in the chapter "Neural ODEs and the forward pass".
    """
    f0, f1 = ks[0], ks[-1]
    dy = y1 - y0
    if tableau.dense == "hermite":
        # y0 + θ dy + θ(θ-1) [ (1-2θ) dy + (θ-1) h f0 + θ h f1 ]
        inner = (1 - 2 * theta) * dy + (theta - 1) * h * f0 + theta * h * f1
        return y0 + theta * dy + theta * (theta - 1) * inner
    if tableau.dense == "dopri5":
        r3 = h * f0 - dy
        r4 = dy - h * f1 - r3
        r5 = h * weighted_sum(DOPRI5_DENSE, ks)
        return y0 + theta * (dy + (1 - theta) * (r3 + theta * (r4 + (1 - theta) * r5)))
    raise ValueError(f"method {tableau.name!r} has no dense output")
