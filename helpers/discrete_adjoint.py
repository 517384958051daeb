"""The discrete adjoint of a fixed-step explicit Runge–Kutta method.

``odeint_adjoint`` differentiates the exact flow and then discretises the adjoint equation
(optimise, then discretise); its gradient differs from the gradient of the computed loss by
about the solver's error. The *discrete* adjoint does it the other way round: it differentiates
the Runge–Kutta recursion itself, so its gradient is the exact gradient of the numbers the
forward pass produced, the same as backpropagating through the solver, but computed by an
explicit backward recursion over the stages instead of by autograd's recorded graph.

One step from ``z_n`` at ``t_n`` with step ``h`` (stages ``i = 1..s``):

    Y_i     = z_n + h Σ_{j<i} a_ij k_j,        k_i = f(Y_i, θ, t_n + c_i h)
    z_{n+1} = z_n + h Σ_i b_i k_i

Given the row ``λ_{n+1} = ∂L/∂z_{n+1}``, the backward step runs the stages in reverse:

    κ_i = h (b_i λ_{n+1} + Σ_{j>i} a_ji μ_j)           (the adjoint of k_i)
    μ_i = κ_i ∂f/∂z(Y_i, θ, t_n + c_i h)               (the adjoint of Y_i)
    λ_n = λ_{n+1} + Σ_i μ_i
    dL/dθ += Σ_i κ_i ∂f/∂θ(Y_i, θ, t_n + c_i h)

Each ``κ_i ∂f/∂z`` and ``κ_i ∂f/∂θ`` is one vector–Jacobian product, evaluated at the stage
values stored by the forward pass. :func:`rk_adjoint_step` is one backward step;
:func:`rk_discrete_adjoint` runs the forward pass and then every backward step.

Introduced in the chapter "When the adjoint goes wrong".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .tableaus import METHODS, ButcherTableau


@dataclass
class DiscreteAdjoint:
    """What :func:`rk_discrete_adjoint` computed.

    **Fields:**

    - `t`: the step grid, as passed in.
    - `y`: the forward states ``z_n`` at every grid time, shape ``(len(t), *y0.shape)``.
    - `lam`: the discrete adjoint ``λ_n = ∂L/∂z_n`` at every grid time, the shape of ``y``;
      ``lam[-1]`` is ``dLdy_final`` and ``lam[0]`` is dL/dy0.
    - `param_grads`: dL/dθ, one tensor per parameter, shaped like it.
    - `nfe`: evaluations of ``func`` in the forward pass.
    - `n_vjp`: vector–Jacobian products in the backward pass (each costs one evaluation of
      ``func`` and one reverse pass through it).
    - `stored_numel`: how many numbers the forward pass stored for the backward pass (the
      stage values ``Y_i`` of every step).

    Introduced in the chapter "When the adjoint goes wrong".
    """

    t: torch.Tensor
    y: torch.Tensor
    lam: torch.Tensor
    param_grads: Tuple[torch.Tensor, ...]
    nfe: int
    n_vjp: int
    stored_numel: int


def _needed_stages(tableau: ButcherTableau) -> List[bool]:
    """Which stages the new state depends on: ``b_i ≠ 0``, or a later needed stage uses ``k_i``.

    (The last stage of an FSAL pair such as dopri5 only serves the error estimate and the next
    step; a fixed-step solve does not need it.)
    """
    s = tableau.stages
    needed = [False] * s
    for i in reversed(range(s)):
        needed[i] = tableau.b[i] != 0.0 or any(needed[j] and tableau.a[j][i] != 0.0 for j in range(i + 1, s))
    return needed


def _check_final(dLdy_final, y0: torch.Tensor) -> None:
    if not isinstance(dLdy_final, torch.Tensor) or dLdy_final.shape != y0.shape:
        shape = tuple(dLdy_final.shape) if isinstance(dLdy_final, torch.Tensor) else type(dLdy_final).__name__
        raise ValueError(f"dLdy_final must have y0's shape {tuple(y0.shape)}, got {shape}")


def rk_adjoint_step(
    func: Callable,
    tableau: ButcherTableau,
    stages: Sequence[Tuple[torch.Tensor, torch.Tensor]],
    h: torch.Tensor,
    lam_next: torch.Tensor,
    params: Sequence[torch.Tensor],
):
    """One backward step of the discrete adjoint: from λ_{n+1} to λ_n, and step n's share of dL/dθ.

    **Arguments:**

    - `func`, `tableau`: the vector field and the method of the forward step.
    - `stages`: the forward step's stage times and values ``[(t_n + c_i h, Y_i), ...]``.
    - `h`: the step's signed length.
    - `lam_next`: λ_{n+1} = ∂L/∂z_{n+1}, shaped like the state.
    - `params`: the tensors θ.

    **Returns:** ``(lam_n, param_grads, mus)``: λ_n = λ_{n+1} + Σ_i μ_i; the step's share
    Σ_i κ_i ∂f/∂θ(Y_i) of dL/dθ, one tensor per parameter; and the stage adjoints
    μ_i = κ_i ∂f/∂z(Y_i), one per stage (``None`` for a stage the new state does not depend on,
    which costs no vector–Jacobian product).

    Introduced in the chapter "When the adjoint goes wrong".
    """
    a, b = tableau.a, tableau.b
    s = len(stages)
    needed = _needed_stages(tableau)
    mu: List[Optional[torch.Tensor]] = [None] * s
    grads = [torch.zeros_like(p) for p in params]
    lam_n = lam_next
    for i in reversed(range(s)):                                   # stages in reverse order
        if not needed[i]:
            continue
        kappa = lam_next * b[i] if b[i] != 0.0 else None
        for j in range(i + 1, s):
            if a[j][i] != 0.0 and mu[j] is not None:
                kappa = mu[j] * a[j][i] if kappa is None else kappa + a[j][i] * mu[j]
        if kappa is None:
            continue
        kappa = h * kappa                                          # κ_i = h (b_i λ_{n+1} + Σ_{j>i} a_ji μ_j)
        t_i, Y = stages[i]
        with torch.enable_grad():                                  # one VJP at the stored stage value
            Y = Y.detach().requires_grad_(True)
            vjps = torch.autograd.grad(func(t_i, Y), (Y,) + tuple(params), grad_outputs=kappa, allow_unused=True)
        mu[i] = torch.zeros_like(Y) if vjps[0] is None else vjps[0]   # μ_i = κ_i ∂f/∂z(Y_i)
        lam_n = lam_n + mu[i]                                      # λ_n = λ_{n+1} + Σ_i μ_i
        for g, v in zip(grads, vjps[1:]):
            if v is not None:
                g.add_(v)                                          # Σ_i κ_i ∂f/∂θ(Y_i)
    return lam_n, tuple(grads), tuple(mu)


def rk_discrete_adjoint(
    func: Callable,
    tableau: Union[str, ButcherTableau],
    y0: torch.Tensor,
    t_grid: torch.Tensor,
    dLdy_final: Union[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]],
    params: Optional[Sequence[torch.Tensor]] = None,
) -> DiscreteAdjoint:
    """Run a fixed-step Runge–Kutta method forward and its discrete adjoint backward.

    The result is the gradient of ``L(z_N)`` for the computed ``z_N``, exact up to rounding: the
    same numbers that backpropagating through :func:`helpers.odeint` with the same method and
    steps gives.

    **Arguments:**

    - `func`: the vector field ``func(t, y)``, as for :func:`helpers.odeint`.
    - `tableau`: the method, a :class:`helpers.ButcherTableau` or a name in ``helpers.METHODS``
      (any explicit tableau; an adaptive pair is used with its solution weights ``b`` only).
    - `y0`: the initial state, any shape (a batch of rows ``(batch, d)`` is fine).
    - `t_grid`: 1-D, strictly increasing or decreasing: one step from each entry to the next.
      (``odeint(..., options=dict(step_size=h))`` over ``[t0, t1]`` takes
      ``n = ceil((t1 - t0) / h)`` equal steps: pass ``torch.linspace(t0, t1, n + 1)``.)
    - `dLdy_final`: ∂L/∂z_N, the gradient of the loss at the last grid time, shaped like ``y0``;
      or a function that takes the computed ``z_N`` and returns it (``z_N`` is known only after
      the forward pass), e.g. ``lambda zN: zN - target`` for ``L = |z_N - target|^2 / 2``.
    - `params`: the tensors θ to differentiate with respect to; by default the trainable
      ``func.parameters()`` of an ``nn.Module``, else none.

    **Returns:** a :class:`DiscreteAdjoint` (states, adjoints, dL/dθ and the work done).
    No autograd graph is kept.

    Introduced in the chapter "When the adjoint goes wrong".
    """
    if isinstance(tableau, str):
        if tableau not in METHODS:
            raise ValueError(f"tableau={tableau!r} is not a known method; choose one of {sorted(METHODS)}")
        tableau = METHODS[tableau]
    if not isinstance(y0, torch.Tensor) or not y0.dtype.is_floating_point:
        raise TypeError("y0 must be a floating-point tensor")
    if not (callable(dLdy_final) or isinstance(dLdy_final, torch.Tensor)):
        raise TypeError(f"dLdy_final must be a tensor or a function of z_N, got {type(dLdy_final).__name__}")
    if isinstance(dLdy_final, torch.Tensor):
        _check_final(dLdy_final, y0)
    if not isinstance(t_grid, torch.Tensor) or t_grid.dim() != 1 or len(t_grid) < 2:
        raise ValueError("t_grid must be a 1-D tensor of at least two times")
    steps = t_grid[1:] - t_grid[:-1]
    if not (bool((steps > 0).all()) or bool((steps < 0).all())):
        raise ValueError("t_grid must be strictly increasing or strictly decreasing")
    if params is None:
        params = [p for p in func.parameters() if p.requires_grad] if isinstance(func, nn.Module) else []
    params = tuple(params)

    a, b, c = tableau.a, tableau.b, tableau.c
    needed = _needed_stages(tableau)
    last = max(i for i, n in enumerate(needed) if n)  # stages after the last needed one are skipped
    t_grid = t_grid.detach()
    nfe = n_vjp = 0

    # forward: store every step's stage values Y_i (and times); no autograd graph
    ys = [y0.detach()]
    stages: List[List[Tuple[torch.Tensor, torch.Tensor]]] = []
    with torch.no_grad():
        y = ys[0]
        for n in range(len(t_grid) - 1):
            t_n, h = t_grid[n], t_grid[n + 1] - t_grid[n]
            ks, step = [], []
            for i in range(last + 1):
                Y = y
                for j in range(i):
                    if a[i][j] != 0.0:
                        Y = Y + (h * a[i][j]) * ks[j]
                t_i = t_n + c[i] * h
                ks.append(func(t_i, Y))
                nfe += 1
                step.append((t_i, Y))
            stages.append(step)
            y = y + h * sum(b[i] * ks[i] for i in range(last + 1) if b[i] != 0.0)
            ys.append(y)

    # backward: the stage adjoints of each step, last step first
    if not isinstance(dLdy_final, torch.Tensor):
        with torch.no_grad():
            dLdy_final = dLdy_final(ys[-1])
        _check_final(dLdy_final, y0)
    lam = dLdy_final.detach().to(y0.dtype)
    lams = [lam]
    grads = [torch.zeros_like(p) for p in params]
    for n in reversed(range(len(t_grid) - 1)):
        lam, step_grads, mus = rk_adjoint_step(func, tableau, stages[n], t_grid[n + 1] - t_grid[n], lam, params)
        n_vjp += sum(mu is not None for mu in mus)
        for g, v in zip(grads, step_grads):
            g.add_(v)
        lams.append(lam)

    stored = sum(Y.numel() for step in stages for _, Y in step)
    return DiscreteAdjoint(
        t=t_grid,
        y=torch.stack(ys),
        lam=torch.stack(lams[::-1]),
        param_grads=tuple(grads),
        nfe=nfe,
        n_vjp=n_vjp,
        stored_numel=stored,
    )
