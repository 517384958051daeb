"""Linear test fields with closed-form solutions, shared by the tests of the gradient methods."""
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
