"""ODEs whose solutions are known in closed form, for checking solvers and gradients.

Each problem is an ``nn.Module`` vector field ``f(t, z)`` with an ``exact(z0, t)`` method that
returns the true solution at every time in ``t`` (shape ``(len(t), *z0.shape)``), built from
differentiable torch operations, so autograd through ``exact`` gives the exact gradients with
respect to ``z0``, the parameters and every entry of ``t``.

Used from the chapter "Neural ODEs and the forward pass" on (each class names the chapter that
introduces it); used throughout the tests.
"""
from __future__ import annotations

import torch
from torch import nn


class LinearODE(nn.Module):
    """``dz/dt = A z`` for column vectors (``z @ A.T`` for a batch of rows).

    Solution: ``z(t) = exp(A (t - t0)) z0``, by ``torch.linalg.matrix_exp``.

    Introduced in the chapter "Neural ODEs and the forward pass".
    """

    def __init__(self, A: torch.Tensor):
        super().__init__()
        self.A = nn.Parameter(A.clone())

    def forward(self, t, z):
        return z @ self.A.T

    def exact(self, z0, t):
        return torch.stack([z0 @ torch.linalg.matrix_exp(self.A * (ti - t[0])).T for ti in t])


class ExponentialODE(nn.Module):
    """``dz/dt = θ z`` with a scalar θ.

    Solution: ``z(t) = z0 exp(θ (t - t0))``; its adjoint is ``λ(t) = λ(t1) exp(θ (t1 - t))``.

    Introduced in the chapter "The Lagrangian".
    """

    def __init__(self, theta: float = 0.5, dtype=None):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(theta, dtype=dtype or torch.get_default_dtype()))

    def forward(self, t, z):
        return self.theta * z

    def exact(self, z0, t):
        return torch.stack([z0 * torch.exp(self.theta * (ti - t[0])) for ti in t])


class TimeDependentODE(nn.Module):
    """``dz/dt = (a + b cos t) z``, elementwise: an explicitly time-dependent field.

    Solution: ``z(t) = z0 exp(a (t - t0) + b (sin t - sin t0))``.

    Introduced in the chapter "Choosing λ: the adjoint equation".
    """

    def __init__(self, a: float = -0.3, b: float = 0.8, dtype=None):
        super().__init__()
        dtype = dtype or torch.get_default_dtype()
        self.a = nn.Parameter(torch.tensor(a, dtype=dtype))
        self.b = nn.Parameter(torch.tensor(b, dtype=dtype))

    def forward(self, t, z):
        return (self.a + self.b * torch.cos(t)) * z

    def exact(self, z0, t):
        return torch.stack([z0 * torch.exp(self.a * (ti - t[0]) + self.b * (torch.sin(ti) - torch.sin(t[0]))) for ti in t])
