"""Numerics on a grid of times: integrals, time derivatives and parameter Jacobians of samples.

The Lagrangian chapter checks its identities on a trajectory sampled at many times: integrals
such as ∫ λ(t) ż(t) dt become quadratures over the samples, ż becomes a finite difference, and
the "hard" Jacobian dz(t)/dθ is computed outright on a problem small enough to afford it. Every
function here is built from differentiable torch operations, so autograd passes through it.

Samples are stacked along the first dimension: ``values[i]`` is the integrand (a scalar, a row
vector, a matrix...) at time ``t[i]``.

Introduced in the chapter "The Lagrangian".
"""
from __future__ import annotations

import warnings
from typing import Callable, Tuple

import torch
from torch import nn


def _check_grid(values: torch.Tensor, t: torch.Tensor, minimum: int) -> None:
    if not isinstance(values, torch.Tensor) or not isinstance(t, torch.Tensor):
        raise TypeError("values and t must be torch tensors")
    if t.dim() != 1:
        raise ValueError(f"t must be 1-D, got shape {tuple(t.shape)}")
    if values.dim() == 0 or values.shape[0] != len(t):
        raise ValueError(f"values must hold one sample per time along dim 0: got {tuple(values.shape)} for {len(t)} times")
    if len(t) < minimum:
        raise ValueError(f"need at least {minimum} times, got {len(t)}")


def _uniform_step(t: torch.Tensor) -> torch.Tensor:
    """The step of a uniform grid (a 0-d tensor), or ``ValueError`` if ``t`` is not uniform."""
    steps = t[1:] - t[:-1]
    h = (t[-1] - t[0]) / (len(t) - 1)
    if not bool(((steps - h).abs() <= 1e-9 * h.abs() + 1e-12).all()) or float(h) == 0.0:
        raise ValueError("t must be a uniform grid (equal, nonzero steps), e.g. torch.linspace(t0, t1, n)")
    return h


def _expand(w: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return w.view(-1, *([1] * (values.dim() - 1)))


def trapezoid(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The trapezoidal rule for ∫ values dt over the grid ``t`` (any spacing): error O(h²).

    **Arguments:**

    - `values`: the integrand at each time, shape ``(len(t), ...)``.
    - `t`: 1-D, the times (increasing or decreasing; a decreasing grid gives the signed integral).

    **Returns:** the integral, shape ``values.shape[1:]``.

    Introduced in the chapter "The Lagrangian".
    """
    _check_grid(values, t, 2)
    dt = _expand(t[1:] - t[:-1], values)
    return (0.5 * dt * (values[1:] + values[:-1])).sum(dim=0)


def simpson(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Composite Simpson's rule for ∫ values dt on a uniform grid: error O(h⁴).

    **Arguments:**

    - `values`: the integrand at each time, shape ``(len(t), ...)``.
    - `t`: a uniform grid with an odd number of times (an even number of intervals).

    **Returns:** the integral, shape ``values.shape[1:]``.

    Introduced in the chapter "The Lagrangian".
    """
    _check_grid(values, t, 3)
    if len(t) % 2 == 0:
        raise ValueError(f"Simpson's rule needs an odd number of times (an even number of intervals), got {len(t)}")
    h = _uniform_step(t)
    w = torch.ones(len(t), dtype=values.dtype, device=values.device)
    w[1:-1:2] = 4.0
    w[2:-1:2] = 2.0
    return (h / 3) * (_expand(w, values) * values).sum(dim=0)


def simpson_with_error(values: torch.Tensor, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Simpson's rule and an estimate of its error, from the same rule on every other sample.

    Simpson's error is close to ``C h⁴``, so the rule with step ``2h`` is off by about 16 times as
    much, and ``|S_h - S_2h| / 15`` estimates the error of ``S_h`` (Richardson's estimate).

    **Arguments:** as :func:`simpson`, with ``len(t) - 1`` divisible by 4.

    **Returns:** ``(integral, error)``, both of shape ``values.shape[1:]``; ``error`` is ≥ 0.

    Introduced in the chapter "The Lagrangian".
    """
    _check_grid(values, t, 5)
    if (len(t) - 1) % 4 != 0:
        raise ValueError(f"the error estimate needs len(t) - 1 divisible by 4, got len(t) = {len(t)}")
    fine = simpson(values, t)
    coarse = simpson(values[::2], t[::2])
    return fine, (fine - coarse).abs() / 15


def time_derivative(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The time derivative of samples on a uniform grid, by fourth-order finite differences.

    Centred five-point differences inside, one-sided five-point differences at the two times
    nearest each end: the error is O(h⁴) everywhere, for a function smooth enough.

    **Arguments:**

    - `values`: samples at each time, shape ``(len(t), ...)``.
    - `t`: a uniform grid of at least five times.

    **Returns:** the derivative at each time, shape ``values.shape``.

    Introduced in the chapter "The Lagrangian".
    """
    _check_grid(values, t, 5)
    h = _uniform_step(t)
    y = values
    inner = (y[:-4] - 8 * y[1:-3] + 8 * y[3:-1] - y[4:]) / (12 * h)
    first = (-25 * y[0] + 48 * y[1] - 36 * y[2] + 16 * y[3] - 3 * y[4]) / (12 * h)
    second = (-3 * y[0] - 10 * y[1] + 18 * y[2] - 6 * y[3] + y[4]) / (12 * h)
    second_last = (3 * y[-1] + 10 * y[-2] - 18 * y[-3] + 6 * y[-4] - y[-5]) / (12 * h)
    last = (25 * y[-1] - 48 * y[-2] + 36 * y[-3] - 16 * y[-4] + 3 * y[-5]) / (12 * h)
    return torch.cat([first[None], second[None], inner, second_last[None], last[None]])


class _Call(nn.Module):
    """Holds ``module`` as a submodule so that ``torch.func.functional_call`` can swap its parameters."""

    def __init__(self, module: nn.Module, fn: Callable):
        super().__init__()
        self.module = module
        self.fn = fn

    def forward(self, *args):
        return self.fn(self.module, *args)


def parameter_jacobian(module: nn.Module, fn: Callable, *args) -> torch.Tensor:
    """The Jacobian of ``fn(module, *args)`` with respect to all of ``module``'s parameters.

    The parameters are flattened into one vector θ in the order of ``module.parameters()``
    (each one row-major), and the Jacobian is computed in forward mode, one column per entry of
    θ. This is the "hard" derivative of the Lagrangian chapter: for a closed-form solution,
    ``parameter_jacobian(problem, lambda m, z0, t: m.exact(z0, t), z0, t)`` is dz(t)/dθ at
    every time, shape ``(len(t), *z0.shape, p)``.

    **Arguments:**

    - `module`: the ``nn.Module`` whose parameters θ are differentiated.
    - `fn`: called as ``fn(module, *args)``; returns a tensor that depends on θ.
    - `args`: the other arguments of ``fn``; they are held fixed.

    **Returns:** a tensor of shape ``(*fn(...).shape, p)``, p the number of parameters.

    Introduced in the chapter "The Lagrangian".
    """
    named = [(name, p) for name, p in module.named_parameters()]
    if not named:
        raise ValueError("module has no parameters to differentiate with respect to")
    sizes = [p.numel() for _, p in named]
    wrapper = _Call(module, fn)

    def of_theta(theta: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(theta, sizes)
        swapped = {f"module.{name}": c.view(p.shape) for (name, p), c in zip(named, chunks)}
        return torch.func.functional_call(wrapper, swapped, args)

    theta = torch.cat([p.detach().reshape(-1) for _, p in named])
    with warnings.catch_warnings():
        # torch's forward mode loads decompositions through torch.jit.script, which warns on first use
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
        return torch.func.jacfwd(of_theta)(theta)


def vjps_along(field: Callable, t: torch.Tensor, z: torch.Tensor, lam: torch.Tensor, params=None):
    """The vector–Jacobian products λ ∂f/∂z and λ ∂f/∂θ at every sample of a trajectory.

    One reverse-mode pass through ``field`` per time; no Jacobian is formed. With ``z[i]`` and
    ``lam[i]`` stored as 1-D tensors of d entries, ``lam[i]`` plays the row vector λ(t_i) ∈ ℝ^{1×d}.

    **Arguments:**

    - `field`: the vector field ``f(t, z)``.
    - `t`: the times, shape ``(N,)``.
    - `z`: the states, shape ``(N, *state_shape)``.
    - `lam`: the multiplier at each time, the same shape as ``z``.
    - `params`: the parameters θ (a sequence of tensors); by default ``field.parameters()``.

    **Returns:** ``(lam_fz, lam_ftheta)``: λ ∂f/∂z at each time, shape ``z.shape``, and
    λ ∂f/∂θ at each time, shape ``(N, p)`` with θ flattened as in :func:`parameter_jacobian`.

    Introduced in the chapter "The Lagrangian".
    """
    params = list(field.parameters()) if params is None else list(params)
    if z.shape != lam.shape or z.shape[0] != len(t):
        raise ValueError(f"z and lam must have the same shape, one sample per time: got {tuple(z.shape)}, "
                         f"{tuple(lam.shape)} for {len(t)} times")
    lam_fz, lam_ftheta = [], []
    for t_i, z_i, lam_i in zip(t, z, lam):
        z_i = z_i.detach().requires_grad_(True)
        with torch.enable_grad():
            grads = torch.autograd.grad(field(t_i, z_i), [z_i, *params], grad_outputs=lam_i.detach(),
                                        allow_unused=True)
        lam_fz.append(torch.zeros_like(z_i) if grads[0] is None else grads[0])
        lam_ftheta.append(torch.cat([torch.zeros(p.numel(), dtype=z.dtype, device=z.device) if g is None
                                     else g.reshape(-1) for p, g in zip(params, grads[1:])]))
    return torch.stack(lam_fz), torch.stack(lam_ftheta)
