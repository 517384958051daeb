"""Losses along the whole path: a running cost plus point losses at observation times.

For ``dz/dt = f(z, θ, t)`` observed at ``t0 < t_1 < ... < t_N`` the loss

    L = ∫_{t0}^{t_N} g(z, θ, t) dt + Σ_i ℓ_i(z(t_i))

has the gradient of one backward solve of ``[z, λ, a_θ]``, driven by the Hamiltonian
``H = λ f + g``:

    dz/dt   =  f
    dλ/dt   = -∂H/∂z = -λ ∂f/∂z - ∂g/∂z        (the forcing term -∂g/∂z)
    da_θ/dt = -∂H/∂θ = -λ ∂f/∂θ - ∂g/∂θ        a_θ(t_N) = 0, a_θ(t0) = dL/dθ

with λ(t_N) = ∂ℓ_N/∂z(t_N) and a jump λ(t_i⁻) = λ(t_i⁺) + ∂ℓ_i/∂z(t_i) at every observation
time. The time gradients are dL/dt0 = -H(t0⁺), dL/dt_i = ∂ℓ_i/∂z(t_i) f(t_i) for 0 < i < N and
dL/dt_N = ∂ℓ_N/∂z(t_N) f(t_N) + g(t_N). :func:`path_loss_gradients` does this;
:class:`RunningCostField` is the other route: carry ``q`` with ``dq/dt = g`` as a second member
of a tuple state, so that ``q(t_N) = ∫ g dt`` and any adjoint code (``helpers.odeint_adjoint``
among them) differentiates the running cost as a point loss on ``q``.

Introduced in the chapter "Losses along the whole path".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import nn

from .odeint import odeint


class RunningCostField(nn.Module):
    """The field on the tuple state ``(z, q)``: ``dz/dt = f(t, z)``, ``dq/dt = g(t, z)``.

    **Arguments:**

    - `func`: the vector field ``func(t, z)``.
    - `g`: the running cost ``g(t, z)``, a scalar (0-d tensor); anything else raises
      ``ValueError`` when the field is called.

    Started from ``(z0, 0)``, the second member is ``q(t) = ∫_{t0}^{t} g dt``. If ``func`` or
    ``g`` is an ``nn.Module`` it is a submodule, so ``parameters()`` holds their parameters
    (what :func:`helpers.odeint_adjoint` differentiates by default).

    Introduced in the chapter "Losses along the whole path".
    """

    def __init__(self, func: Callable, g: Callable):
        super().__init__()
        if not callable(func) or not callable(g):
            raise TypeError("func and g must be callables (t, z) -> tensor")
        self.func, self.g = func, g

    def forward(self, t, state):
        z, _ = state
        cost = self.g(t, z)
        if cost.numel() != 1:
            raise ValueError(f"g must return a scalar, got shape {tuple(cost.shape)}")
        return self.func(t, z), cost.reshape(())


class RunningCostAdjoint:
    """The backward solve's right-hand side on the flat state ``[z, λ, a_θ]``.

    **Arguments:**

    - `func`, `g`: the field and the running cost, as for :class:`RunningCostField`.
    - `shape`: the shape of ``z`` (and of λ).
    - `params`: the parameters θ whose gradient accumulates in ``a_θ``.

    One reverse pass through the scalar ``H = λ f + g`` gives ``∂H/∂z`` and ``∂H/∂θ``.

    Introduced in the chapter "Losses along the whole path".
    """

    def __init__(self, func: Callable, g: Callable, shape, params: Sequence[torch.Tensor]):
        self.func, self.g = func, g
        self.shape, self.params = torch.Size(shape), tuple(params)
        self.n = self.shape.numel()

    def split(self, state):
        """View the flat state as ``(z, λ, a_θ)``."""
        n = self.n
        return state[:n].view(self.shape), state[n:2 * n].view(self.shape), state[2 * n:]

    def __call__(self, t, state):
        z, lam, _ = self.split(state)
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            f = self.func(t, z)
            H = (lam * f).sum() + self.g(t, z)  # the Hamiltonian λ f + g
            dH = torch.autograd.grad(H, (z, *self.params), allow_unused=True)
        parts = [f.detach().reshape(-1)]
        for x, d in zip((z, *self.params), dH):
            parts.append(torch.zeros(x.numel(), dtype=state.dtype, device=state.device) if d is None
                         else -d.reshape(-1))
        return torch.cat(parts)


@dataclass
class PathLossGradients:
    """What :func:`path_loss_gradients` returns.

    **Fields:**

    - `loss`: L, a 0-d tensor.
    - `dLdz0`: dL/dz0 = λ(t0⁻), shaped like ``z0``.
    - `dLdtheta`: dL/dθ = a_θ(t0), a tuple shaped like ``params``.
    - `dLdt`: dL/dt_i for every time, shape ``(len(t),)``.
    - `jumps`: ∂ℓ/∂z(t_i) at every time, shape ``(len(t), *z0.shape)``: what λ jumps by.
    - `path_t`, `path_lam`: λ sampled from t0 to t_N, interval by interval; an interior
      observation time appears twice, with λ(t_i⁻) (jump included) and then λ(t_i⁺).

    Introduced in the chapter "Losses along the whole path".
    """

    loss: torch.Tensor
    dLdz0: torch.Tensor
    dLdtheta: Tuple[torch.Tensor, ...]
    dLdt: torch.Tensor
    jumps: torch.Tensor
    path_t: torch.Tensor
    path_lam: torch.Tensor


def _check(func, g, z0, t, point_loss, samples):
    for name, value in (("func", func), ("g", g)):
        if not callable(value):
            raise TypeError(f"{name} must be a callable (t, z) -> tensor, got {type(value).__name__}")
    if point_loss is not None and not callable(point_loss):
        raise TypeError(f"point_loss must be None or a callable zs -> scalar, got {type(point_loss).__name__}")
    if not isinstance(z0, torch.Tensor) or not z0.dtype.is_floating_point:
        raise TypeError(f"z0 must be a floating-point tensor, got {type(z0).__name__}")
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or len(t) < 2:
        raise ValueError("t must be a 1-D tensor of at least two times")
    if not bool((t[1:] > t[:-1]).all()):
        raise ValueError("t must be strictly increasing")
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 2:
        raise ValueError(f"samples must be an integer of at least 2, got {samples!r}")


def _default_params(func, g):
    found, seen = [], set()
    for m in (func, g):
        for p in (m.parameters() if isinstance(m, nn.Module) else ()):
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                found.append(p)
    return tuple(found)


def path_loss_gradients(
    func: Callable,
    g: Callable,
    z0: torch.Tensor,
    t: torch.Tensor,
    point_loss: Optional[Callable] = None,
    *,
    params: Optional[Sequence[torch.Tensor]] = None,
    samples: int = 2,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    method: Optional[str] = None,
    options: Optional[dict] = None,
) -> PathLossGradients:
    """``L = ∫ g dt + point_loss(z(t_0), ..., z(t_N))`` and its gradients by the forced adjoint.

    **Arguments:**

    - `func`: the vector field ``func(t, z)``.
    - `g`: the running cost ``g(t, z)``, a scalar, integrated from ``t[0]`` to ``t[-1]``.
    - `z0`: the initial state, a floating-point tensor of any shape.
    - `t`: 1-D, strictly increasing: t0 and the observation times.
    - `point_loss`: ``point_loss(zs)`` on the states at every time, ``zs`` of shape
      ``(len(t), *z0.shape)`` as :func:`helpers.odeint` returns them; ``None`` for none.
    - `params`: the tensors θ; by default the parameters of ``func`` and ``g`` (those that are
      modules) that require a gradient.
    - `samples`: how many times per interval ``path_lam`` keeps (at least 2, the two ends).
    - `rtol`, `atol`, `method`, `options`: for :func:`helpers.odeint`, forward and backward.

    **Returns:** a :class:`PathLossGradients`; no autograd graph is kept.

    **Raises:** ``TypeError`` for ``func``, ``g`` or ``point_loss`` not callable or ``z0`` not a
    floating-point tensor; ``ValueError`` for ``t`` not 1-D, strictly increasing, of at least
    two times, or ``samples`` below 2.

    Introduced in the chapter "Losses along the whole path".
    """
    _check(func, g, z0, t, point_loss, samples)
    params = _default_params(func, g) if params is None else tuple(params)
    solve = dict(rtol=rtol, atol=atol, method=method, options=options)
    t = t.detach()
    with torch.no_grad():  # forward: the states at every t_i and q = ∫ g dt
        start = (z0.detach(), torch.zeros((), dtype=z0.dtype, device=z0.device))
        zs, q = odeint(RunningCostField(func, g), start, t, **solve)
    with torch.enable_grad():  # the jumps ∂ℓ/∂z(t_i), all at once
        zs_ = zs.requires_grad_(True)
        ell = point_loss(zs_) if point_loss is not None else zs_.sum() * 0
        (jumps,) = torch.autograd.grad(ell, zs_, allow_unused=True)
    jumps = torch.zeros_like(zs) if jumps is None else jumps
    zs = zs.detach()
    rhs = RunningCostAdjoint(func, g, z0.shape, params)
    lam = jumps[-1]
    a_theta = torch.zeros(sum(p.numel() for p in params), dtype=z0.dtype, device=z0.device)
    path_t, path_lam = [], []
    with torch.no_grad():
        for i in range(len(t) - 1, 0, -1):  # from t_i back to t_{i-1}
            grid = torch.linspace(float(t[i]), float(t[i - 1]), samples, dtype=t.dtype)
            state = torch.cat([zs[i].reshape(-1), lam.reshape(-1), a_theta])
            states = odeint(rhs, state, grid, **solve)
            path_t.append(grid.flip(0))
            path_lam.append(torch.stack([rhs.split(s)[1] for s in states]).flip(0))
            _, lam, a_theta = rhs.split(states[-1])  # λ(t_{i-1}⁺)
            lam = lam + jumps[i - 1]  # the jump: λ(t_{i-1}⁻)
        f0 = func(t[0], zs[0])
        fN = func(t[-1], zs[-1])
        lam0_plus = lam - jumps[0]
        dLdt = torch.stack([(jumps[i] * func(t[i], zs[i])).sum() for i in range(len(t))])
        dLdt[0] = -((lam0_plus * f0).sum() + g(t[0], zs[0]))  # -H(t0⁺)
        dLdt[-1] = (jumps[-1] * fN).sum() + g(t[-1], zs[-1])
    pieces, offset = [], 0
    for p in params:
        pieces.append(a_theta[offset:offset + p.numel()].view(p.shape))
        offset += p.numel()
    return PathLossGradients(
        loss=(q[-1] + ell).detach(), dLdz0=lam, dLdtheta=tuple(pieces), dLdt=dLdt,
        jumps=jumps, path_t=torch.cat(path_t[::-1]), path_lam=torch.cat(path_lam[::-1]))
