"""Shared by the tests of the gradient methods: linear fields with closed-form solutions, and
the gradients of a weighted sum of the outputs with respect to y0, t and the parameters."""
import torch
from torch import nn


class Linear(nn.Module):
    """dz/dt = A z with A a parameter: z(t) = e^{At} z0."""

    def __init__(self, A):
        super().__init__()
        self.A = nn.Parameter(A.clone())

    def forward(self, t, z):
        return z @ self.A.T


class Decay(nn.Module):
    """dz/dt = -k z with k a parameter: z(t) = e^{-kt} z0."""

    def __init__(self, k):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(k, dtype=torch.float64))

    def forward(self, t, z):
        return -self.k * z


def rel(a, b) -> float:
    """The largest entry of |a - b| over the largest entry of |b|."""
    return ((a - b).abs().max() / b.abs().max()).item()


def gradients(solver, f, y0, t, w, **kwargs):
    """d(sum(w * ys))/d(y0, t, *f.parameters()) for ys = solver(f, y0, t, **kwargs)."""
    y0 = y0.detach().clone().requires_grad_(True)
    t = t.detach().clone().requires_grad_(True)
    ys = solver(f, y0, t, **kwargs)
    return torch.autograd.grad((w * ys).sum(), [y0, t] + list(f.parameters()))
