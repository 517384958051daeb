"""Vector fields used across the book: a small tanh MLP and the spiral of torchdiffeq's demo.

Introduced in the chapter "Neural ODEs and the forward pass".
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """A time-independent tanh multilayer perceptron ``f(z) = W_k tanh(... tanh(W_1 z + b_1) ...) + b_k``.

    **Arguments:**

    - `sizes`: layer widths from input to output, e.g. ``(2, 64, 2)``; the first and last must
      equal the state dimension.
    - `dtype`, `device`: where the weights live.

    Called as ``f(t, z)`` so it can be handed to ``odeint`` directly; ``t`` is ignored. A tanh MLP
    is globally Lipschitz in ``z``, which the book uses when it appeals to Picard–Lindelöf.

    Introduced in the chapter "Neural ODEs and the forward pass".
    """

    def __init__(self, sizes: Sequence[int] = (2, 64, 2), dtype=None, device=None):
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"sizes must list at least an input and an output width, got {sizes!r}")
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b, dtype=dtype, device=device))
            if i < len(sizes) - 2:
                layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


SPIRAL_MATRIX = ((-0.1, 2.0), (-2.0, -0.1))


class Spiral(nn.Module):
    """The cubic spiral ``dz/dt = z**3 @ A`` with ``A = [[-0.1, 2.0], [-2.0, -0.1]]``.

    The system that torchdiffeq's ``examples/ode_demo.py`` learns from ``z(0) = [2, 0]``; the
    training chapter fits a neural ODE to its trajectory. ``z`` is a batch of row vectors.

    Introduced in the chapter "Neural ODEs and the forward pass".
    """

    def __init__(self, dtype=None, device=None):
        super().__init__()
        self.register_buffer("A", torch.tensor(SPIRAL_MATRIX, dtype=dtype or torch.get_default_dtype(), device=device))

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return z ** 3 @ self.A
