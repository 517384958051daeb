"""The adjoint (costate) λ(t) along a whole time grid, from one backward solve.

:func:`helpers.odeint_adjoint` returns only what training needs, λ(t0) and a_θ(t0). To look at the
adjoint as a function of time (to plot it, or to compare it with a closed form) this module solves
the same augmented system ``[z, λ, a_θ]`` backward from t1 and keeps its value at every time of a
grid:

    dz/dt   =  f(z, θ, t),      z(t1)   = z1
    dλ/dt   = -λ ∂f/∂z,         λ(t1)   = ∂L/∂z(t1)
    da_θ/dt = -λ ∂f/∂θ,         a_θ(t1) = 0,        so a_θ(t0) = ∫_{t0}^{t1} λ ∂f/∂θ dt = dL/dθ.

Introduced in the chapter "Choosing λ: the adjoint equation".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import nn

from .adjoint import AugmentedDynamics
from .odeint import odeint


@dataclass
class AdjointPath:
    """The backward solve of ``[z, λ, a_θ]`` sampled on a time grid.

    **Fields:**

    - `t`: the grid, as it was passed in (its first entry is t0, its last t1).
    - `z`: the state, shape ``(len(t), *z1.shape)``, reconstructed backward from ``z1``.
    - `lam`: the adjoint λ, the same shape as ``z``; ``lam[-1]`` is ∂L/∂z(t1) and ``lam[0]``
      is dL/dz(t0).
    - `a_theta`: the parameter channel, shape ``(len(t), p)`` with ``p`` the number of scalar
      parameters (all of ``params`` flattened and concatenated); ``a_theta[-1]`` is 0 and
      ``a_theta[0]`` is dL/dθ.
    - `param_shapes`: the shapes of the parameters, in order, to cut ``a_theta`` back into pieces.

    Introduced in the chapter "Choosing λ: the adjoint equation".
    """

    t: torch.Tensor
    z: torch.Tensor
    lam: torch.Tensor
    a_theta: torch.Tensor
    param_shapes: Tuple[torch.Size, ...]

    def param_grads(self, index: int = 0) -> Tuple[torch.Tensor, ...]:
        """``a_theta[index]`` cut into tensors shaped like the parameters.

        **Arguments:**

        - `index`: which grid time to read; the default 0 (t0) gives dL/dθ.

        **Returns:** a tuple with one tensor per parameter.
        """
        pieces, offset = [], 0
        row = self.a_theta[index]
        for shape in self.param_shapes:
            n = shape.numel()
            pieces.append(row[offset:offset + n].view(shape))
            offset += n
        return tuple(pieces)


def adjoint_path(
    func: Callable,
    z1: torch.Tensor,
    dLdz1: torch.Tensor,
    t_grid: torch.Tensor,
    params: Optional[Sequence[torch.Tensor]] = None,
    *,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    method: Optional[str] = None,
    options: Optional[dict] = None,
) -> AdjointPath:
    """Solve the adjoint equation backward from t1 and return z, λ and a_θ on a grid.

    **Arguments:**

    - `func`: the vector field ``func(t, z)``, as for :func:`helpers.odeint`.
    - `z1`: the state at the final time t1 = ``t_grid[-1]`` (from a forward solve), any shape;
      a batch of states is a tensor of shape ``(batch, d)``, one row per state.
    - `dLdz1`: ∂L/∂z(t1), the same shape as ``z1``; it is λ(t1).
    - `t_grid`: 1-D, strictly monotonic, from t0 = ``t_grid[0]`` to t1 = ``t_grid[-1]``; the
      solve runs from its last entry to its first and reports every entry.
    - `params`: the tensors θ whose gradient accumulates in a_θ; by default
      ``func.parameters()`` if ``func`` is an ``nn.Module``, else none.
    - `rtol`, `atol`, `method`, `options`: passed to :func:`helpers.odeint` for the backward
      solve of the augmented system.

    **Returns:** an :class:`AdjointPath` whose ``z``, ``lam`` and ``a_theta`` are ordered like
    ``t_grid`` (index 0 is t0). No autograd graph is kept.

    Introduced in the chapter "Choosing λ: the adjoint equation".
    """
    if z1.shape != dLdz1.shape:
        raise ValueError(f"dLdz1 must have z1's shape {tuple(z1.shape)}, got {tuple(dLdz1.shape)}")
    if params is None:
        params = tuple(func.parameters()) if isinstance(func, nn.Module) else ()
        params = tuple(x for x in params if x.requires_grad)
    params = tuple(params)
    for i, x in enumerate(params):
        if not (isinstance(x, torch.Tensor) and x.requires_grad):
            raise ValueError(f"params[{i}] must be a tensor with requires_grad=True")
    dynamics = AugmentedDynamics(func, z1.shape, params)
    p = sum(x.numel() for x in params)
    state1 = torch.cat([
        z1.detach().reshape(-1),
        dLdz1.detach().reshape(-1).to(z1.dtype),
        torch.zeros(p, dtype=z1.dtype, device=z1.device),
    ])
    with torch.no_grad():
        # t_grid reversed: the solve starts at t1 and ends at t0
        states = odeint(dynamics, state1, t_grid.detach().flip(0), rtol=rtol, atol=atol,
                        method=method, options=options).flip(0)
    n = dynamics.n
    z = states[:, :n].reshape(len(t_grid), *z1.shape)
    lam = states[:, n:2 * n].reshape(len(t_grid), *z1.shape)
    a_theta = states[:, 2 * n:]
    return AdjointPath(t=t_grid, z=z, lam=lam, a_theta=a_theta,
                       param_shapes=tuple(x.shape for x in params))
