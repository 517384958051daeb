"""Gradients of a loss with respect to the times: the initial time t0 and every observation time.

A loss ``L(z(t_1), ..., z(t_N))`` of a solution of ``dz/dt = f(z, θ, t)``, ``z(t_0) = z0``, depends
on the times as well as on ``z0`` and θ. Moving an observation time t_i (i ≥ 1) only moves the
point at which the trajectory is read, so its gradient is a direct term,

    dL/dt_i = ∂L/∂z(t_i) · f(z(t_i), t_i)                       (i ≥ 1).

Moving t0 moves the start of the trajectory while z0 stays put. Its gradient can be written at
the boundary, ``dL/dt0 = -λ(t0) · f(z0, t0)``, or as an integral, computed by one more channel
of the backward solve:

    dz/dt   =  f(z, θ, t)
    dλ/dt   = -λ ∂f/∂z                λ jumps by ∂L/∂z(t_i) at each t_i
    da_t/dt = -λ ∂f/∂t                a_t(t_N) = -dL/dt_N, and a_t drops by dL/dt_i at each t_i

so that a_t(t0) = dL/dt0 (Algorithm 2 of Chen et al., 2018, with several observation times).
:func:`time_gradients` solves ``[z, λ, a_t]`` backward with :func:`helpers.odeint` and returns
both forms; :class:`TimeInputMLP` is a tanh MLP that sees ``t``, so that ∂f/∂t is not zero.

Introduced in the chapter "Gradients with respect to t0, t1 and the observation times".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .models import MLP
from .odeint import odeint


class TimeInputMLP(nn.Module):
    """A tanh MLP that takes the time as one more input: ``f(t, z) = MLP([z, t])``.

    **Arguments:**

    - `sizes`: layer widths from the state to the output, e.g. ``(2, 32, 2)``; the first and
      the last must equal the state dimension d. The first layer gets ``d + 1`` inputs, the
      last being ``t``.
    - `dtype`, `device`: where the weights live.

    ``z`` may be a single state of shape ``(d,)`` or a batch of rows ``(batch, d)``; ``t`` is a
    0-d tensor, used through differentiable operations so that autograd gives ∂f/∂t.

    Introduced in the chapter "Gradients with respect to t0, t1 and the observation times".
    """

    def __init__(self, sizes: Sequence[int] = (2, 32, 2), dtype=None, device=None):
        super().__init__()
        sizes = tuple(sizes)
        if len(sizes) < 2:
            raise ValueError(f"sizes must list at least an input and an output width, got {sizes!r}")
        self.mlp = MLP((sizes[0] + 1,) + sizes[1:], dtype=dtype, device=device)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=z.dtype, device=z.device)
        time_column = t.reshape(*([1] * z.dim())).expand(*z.shape[:-1], 1)
        return self.mlp.net(torch.cat([z, time_column], dim=-1))


class TimeAugmentedDynamics:
    """The right-hand side of the backward solve on the flat state ``[z, λ, a_t]``.

    **Arguments:**

    - `func`: the vector field ``func(t, z)``.
    - `shape`: the shape of ``z`` (and of ``λ``).

    Calling it with ``(t, state)`` returns ``[f, -λ ∂f/∂z, -λ ∂f/∂t]`` flattened: one evaluation
    of ``func`` and one reverse-mode pass give both products. If ``func`` does not use ``t``
    (or uses it outside autograd, e.g. through ``float(t)``), ∂f/∂t counts as zero.

    Introduced in the chapter "Gradients with respect to t0, t1 and the observation times".
    """

    def __init__(self, func: Callable, shape: torch.Size):
        self.func = func
        self.shape = torch.Size(shape)
        self.n = self.shape.numel()

    def split(self, state: torch.Tensor):
        """View the flat state as ``(z, λ, a_t)``; ``a_t`` is a 0-d tensor."""
        n = self.n
        return state[:n].view(self.shape), state[n:2 * n].view(self.shape), state[2 * n]

    def __call__(self, t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        z, lam, _ = self.split(state)
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            t = t.detach().clone().requires_grad_(True)
            f = self.func(t, z)
            if f.requires_grad:
                # -λ as grad_outputs gives -λ ∂f/∂z and -λ ∂f/∂t in one pass
                g_z, g_t = torch.autograd.grad(f, (z, t), grad_outputs=-lam, allow_unused=True)
            else:
                g_z, g_t = None, None
        g_z = torch.zeros_like(z) if g_z is None else g_z
        g_t = torch.zeros((), dtype=state.dtype, device=state.device) if g_t is None else g_t
        return torch.cat([f.detach().reshape(-1), g_z.reshape(-1), g_t.reshape(1).to(state.dtype)])


@dataclass
class TimeGradients:
    """What :func:`time_gradients` returns; every tensor is ordered like ``t`` (index 0 is t0).

    **Fields:**

    - `t`: the times.
    - `dLdt`: dL/dt_i for every time, shape ``(len(t),)``: ``dLdt[0]`` is dL/dt0 from the
      ``a_t`` channel (the integral form), ``dLdt[i]`` for i ≥ 1 the direct term
      ∂L/∂z(t_i) · f(z(t_i), t_i).
    - `dLdt0_boundary`: dL/dt0 from the boundary formula -λ(t0⁺) · f(z0, t0), where λ(t0⁺) is
      λ(t0) without the jump ∂L/∂z(t0) (z(t0) = z0 does not move when t0 does); a 0-d tensor.
    - `lam`: dL/dz(t_i), the adjoint at each time with the jump at t_i included, shape
      ``(len(t), *z.shape)``; ``lam[0]`` is dL/dz0.
    - `a_t`: the time channel at each t_i after its drop there, shape ``(len(t),)``;
      ``a_t[-1]`` is -dL/dt_N and ``a_t[0]`` is dL/dt0.
    - `direct`: the direct terms ∂L/∂z(t_i) · f(z(t_i), t_i) at every time, shape
      ``(len(t),)``; ``direct[0]`` is *not* part of dL/dt0.

    Introduced in the chapter "Gradients with respect to t0, t1 and the observation times".
    """

    t: torch.Tensor
    dLdt: torch.Tensor
    dLdt0_boundary: torch.Tensor
    lam: torch.Tensor
    a_t: torch.Tensor
    direct: torch.Tensor


def time_gradients(
    func: Callable,
    t: torch.Tensor,
    zs: torch.Tensor,
    grad_zs: torch.Tensor,
    *,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    method: Optional[str] = None,
    options: Optional[dict] = None,
) -> TimeGradients:
    """dL/dt_i for every time: the direct terms, and dL/dt0 by the ``a_t`` channel.

    Solves ``[z, λ, a_t]`` backward from t_N to t0 with :func:`helpers.odeint`, one interval
    between consecutive times at a time. At each t_i it re-anchors ``z`` to ``zs[i]``, adds the
    jump ``grad_zs[i]`` to λ and (for i ≥ 1) subtracts the direct term dL/dt_i from ``a_t``.

    **Arguments:**

    - `func`: the vector field ``func(t, z)``; ∂f/∂t comes from autograd through ``t``.
    - `t`: 1-D, strictly monotonic, the times t0, t_1, ..., t_N (t_N may be below t0).
    - `zs`: the forward solution at every time in ``t``, shape ``(len(t), *z.shape)``, e.g.
      ``helpers.odeint(func, z0, t)``.
    - `grad_zs`: ∂L/∂z(t_i) at every time, the shape of ``zs`` (zeros where the loss does not
      look), e.g. ``torch.autograd.grad(L, zs)``.
    - `rtol`, `atol`, `method`, `options`: passed to :func:`helpers.odeint` for the backward
      solves.

    **Returns:** a :class:`TimeGradients`. No autograd graph is kept.

    Introduced in the chapter "Gradients with respect to t0, t1 and the observation times".
    """
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or len(t) < 2:
        raise ValueError("t must be a 1-D tensor of at least two times")
    if zs.shape != grad_zs.shape:
        raise ValueError(f"grad_zs must have zs's shape {tuple(zs.shape)}, got {tuple(grad_zs.shape)}")
    if zs.shape[0] != len(t):
        raise ValueError(f"zs must hold one state per time: got {zs.shape[0]} states for {len(t)} times")
    t, zs, grad_zs = t.detach(), zs.detach(), grad_zs.detach().to(zs.dtype)
    shape = zs.shape[1:]
    dynamics = TimeAugmentedDynamics(func, shape)
    n_times = len(t)
    with torch.no_grad():
        direct = torch.stack([(grad_zs[i] * func(t[i], zs[i])).sum() for i in range(n_times)]).to(zs.dtype)
        lam = grad_zs[-1]
        a_t = -direct[-1]
        lams, a_ts = [lam], [a_t]
        for i in range(n_times - 1, 0, -1):
            state = torch.cat([zs[i].reshape(-1), lam.reshape(-1), a_t.reshape(1)])
            state = odeint(dynamics, state, t[i - 1:i + 1].flip(0), rtol=rtol, atol=atol,
                           method=method, options=options)[-1]
            _, lam, a_t = dynamics.split(state)
            lam_plus = lam                       # λ(t_{i-1}⁺), before the jump at t_{i-1}
            lam = lam + grad_zs[i - 1]
            if i - 1 > 0:
                a_t = a_t - direct[i - 1]
            lams.append(lam)
            a_ts.append(a_t)
        boundary = -(lam_plus * func(t[0], zs[0])).sum()
    lams.reverse()
    a_ts.reverse()
    a_t_all = torch.stack([a.reshape(()) for a in a_ts])
    dLdt = direct.clone()
    dLdt[0] = a_t_all[0]
    return TimeGradients(t=t, dLdt=dLdt, dLdt0_boundary=boundary, lam=torch.stack(lams),
                         a_t=a_t_all, direct=direct)
