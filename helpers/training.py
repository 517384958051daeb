"""Training a neural ODE on one observed trajectory, with gradients from the adjoint.

The pieces of the training chapter: the data (the cubic spiral of torchdiffeq's demo, sampled
along one trajectory), a model for it (a tanh MLP that reads ``z**3``), random short windows of
the trajectory as mini-batches, one gradient-descent iteration (solve forward, compute the loss,
solve backward, update) and the loop around it.

States follow PyTorch's layout: the trajectory is a tensor of shape ``(T, d)``, one row per time;
a batch of windows starts from ``(batch, d)`` rows and a solve over a window returns
``(window, batch, d)``.

Introduced in the chapter "Training a Neural ODE with the adjoint".
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch
from torch import nn

from .adjoint import odeint_adjoint
from .models import MLP, Spiral
from .odeint import odeint

SPIRAL_START = (2.0, 0.0)


@dataclass
class Trajectory:
    """One solution sampled on a time grid.

    **Fields:**

    - `t`: the times, shape ``(T,)``, increasing, ``t[0]`` the initial time.
    - `z`: the states, shape ``(T, d)``; ``z[0]`` is the initial state.

    Introduced in the chapter "Training a Neural ODE with the adjoint".
    """

    t: torch.Tensor
    z: torch.Tensor


def make_spiral_data(
    n_times: int = 1000,
    t_end: float = 25.0,
    *,
    dtype: Optional[torch.dtype] = None,
    device=None,
    rtol: float = 1e-9,
    atol: float = 1e-10,
) -> Trajectory:
    """The true trajectory of the cubic spiral ``dz/dt = z**3 @ A`` from ``z(0) = [2, 0]``.

    ``A = [[-0.1, 2.0], [-2.0, -0.1]]`` (:class:`helpers.models.Spiral`), the system that
    torchdiffeq's ``examples/ode_demo.py`` learns; its defaults (1000 times on [0, 25]) are the
    demo's.

    **Arguments:**

    - `n_times`: the number of equally spaced observation times, at least 2.
    - `t_end`: the last time; the first is 0.
    - `dtype`, `device`: where the data live (default dtype: torch's default).
    - `rtol`, `atol`: tolerances of the reference solve (tight: this is the "truth").

    **Returns:** a :class:`Trajectory` with ``t`` of shape ``(n_times,)`` and ``z`` of shape
    ``(n_times, 2)``.

    Introduced in the chapter "Training a Neural ODE with the adjoint".
    """
    if n_times < 2:
        raise ValueError(f"n_times must be at least 2, got {n_times}")
    if not t_end > 0:
        raise ValueError(f"t_end must be positive, got {t_end}")
    dtype = dtype or torch.get_default_dtype()
    t = torch.linspace(0.0, float(t_end), n_times, dtype=dtype, device=device)
    z0 = torch.tensor(SPIRAL_START, dtype=dtype, device=device)
    with torch.no_grad():
        z = odeint(Spiral(dtype=dtype, device=device), z0, t, rtol=rtol, atol=atol)
    return Trajectory(t=t, z=z)


class CubeMLP(nn.Module):
    """A tanh MLP that reads the cubes of the state: ``f(t, z) = W_2 tanh(W_1 z**3 + b_1) + b_2``.

    The model of torchdiffeq's spiral demo. Feeding it ``z**3`` (elementwise) hands it the
    nonlinearity of the true field, so that what it has to learn is close to a linear map.
    The weights start small (normal with standard deviation ``init_std``) and the biases at zero,
    so that the initial field is gentle.

    **Arguments:**

    - `hidden`: the width of the hidden layer.
    - `dim`: the state dimension.
    - `init_std`: the standard deviation of the initial weights.
    - `dtype`, `device`: where the weights live.

    Introduced in the chapter "Training a Neural ODE with the adjoint".
    """

    def __init__(self, hidden: int = 50, dim: int = 2, init_std: float = 0.1, dtype=None, device=None):
        super().__init__()
        self.mlp = MLP((dim, hidden, dim), dtype=dtype, device=device)
        with torch.no_grad():
            for layer in self.mlp.net:
                if isinstance(layer, nn.Linear):
                    layer.weight.normal_(0.0, init_std)
                    layer.bias.zero_()

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.mlp(t, z ** 3)


def sample_windows(
    t: torch.Tensor,
    z: torch.Tensor,
    batch_size: int,
    window: int,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A mini-batch of short windows of a trajectory, with distinct random starting points.

    Every window holds ``window`` consecutive samples. The windows are solved together, as one
    batch, from a common time grid ``t[:window] - t[0]``, which is right for an autonomous field
    on an equally spaced grid (the field does not depend on ``t``, so each window may be shifted
    to start at 0).

    **Arguments:**

    - `t`: the times, shape ``(T,)``, equally spaced.
    - `z`: the states, shape ``(T, d)``.
    - `batch_size`: how many windows; at most ``T - window + 1``.
    - `window`: the samples per window, at least 2.
    - `generator`: a CPU ``torch.Generator`` for the starting points (reproducible batches).

    **Returns:** ``(z0, t_window, targets)``: the first state of each window, shape
    ``(batch_size, d)``; the common times, shape ``(window,)``; and the observed states, shape
    ``(window, batch_size, d)`` (``targets[0]`` is ``z0``).

    Introduced in the chapter "Training a Neural ODE with the adjoint".
    """
    if z.dim() != 2 or z.shape[0] != t.shape[0]:
        raise ValueError(f"z must have shape (len(t), d) = ({len(t)}, d), got {tuple(z.shape)}")
    if window < 2:
        raise ValueError(f"window must be at least 2, got {window}")
    n_starts = len(t) - window + 1
    if not 1 <= batch_size <= n_starts:
        raise ValueError(f"batch_size must be between 1 and {n_starts} (the windows that fit), got {batch_size}")
    starts = torch.randperm(n_starts, generator=generator)[:batch_size].to(z.device)
    offsets = torch.arange(window, device=z.device)
    targets = z[starts[None, :] + offsets[:, None]]  # (window, batch, d)
    return targets[0], t[:window] - t[0], targets


def mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The mean squared error over every entry.

    **Arguments:** `prediction`, `target`: tensors of the same shape.

    **Returns:** a 0-d tensor, the mean of ``(prediction - target) ** 2``.

    Introduced in the chapter "Training a Neural ODE with the adjoint".
    """
    return ((prediction - target) ** 2).mean()


def training_step(
    func: nn.Module,
    optimizer: torch.optim.Optimizer,
    z0: torch.Tensor,
    t: torch.Tensor,
    targets: torch.Tensor,
    *,
    solver: Callable = odeint_adjoint,
    loss_fn: Callable = mse,
    **solve_kwargs,
) -> float:
    """One iteration of gradient descent on a neural ODE, in its four steps.

    **Arguments:**

    - `func`: the model field ``func(t, z)``, an ``nn.Module`` whose parameters ``optimizer``
      updates.
    - `optimizer`: a ``torch.optim`` optimizer over ``func``'s parameters.
    - `z0`, `t`, `targets`: a mini-batch as :func:`sample_windows` returns it.
    - `solver`: :func:`helpers.odeint_adjoint` (gradients from the backward adjoint solve) or
      :func:`helpers.odeint` (backpropagation through the solver).
    - `loss_fn`: ``loss_fn(prediction, targets)``, a scalar; by default the mean squared error.
    - `solve_kwargs`: passed to ``solver`` (``rtol``, ``atol``, ``method``, ``stats``...).

    **Returns:** the loss before the update, a float.

    Introduced in the chapter "Training a Neural ODE with the adjoint".
    """
    optimizer.zero_grad()
    prediction = solver(func, z0, t, **solve_kwargs)  # 1. forward: solve from t0 to every t_i
    loss = loss_fn(prediction, targets)                # 2. the loss
    loss.backward()                                    # 3. backward: the adjoint solve fills .grad
    optimizer.step()                                   # 4. update θ
    return loss.item()


def _progress_bar(iterable, enabled: bool, description: str):
    if not enabled:
        return iterable
    try:
        with warnings.catch_warnings():
            # without ipywidgets tqdm.auto warns once and falls back to a text bar, which is fine
            warnings.simplefilter("ignore")
            from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: no bar without it
        return iterable
    # a few updates only: a page built from the notebook shows every update as a line of its own
    return tqdm(iterable, desc=description, mininterval=5.0)


def train(
    func: nn.Module,
    data: Trajectory,
    *,
    iterations: int,
    batch_size: int = 20,
    window: int = 10,
    lr: float = 1e-2,
    lr_end: float = 1e-4,
    seed: int = 0,
    solver: Callable = odeint_adjoint,
    loss_fn: Callable = mse,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    progress: bool = False,
    callback: Optional[Callable[[int, nn.Module, float], None]] = None,
    **solve_kwargs,
) -> List[float]:
    """Fit ``func`` to a trajectory by Adam on random short windows.

    Each iteration draws a mini-batch with :func:`sample_windows` and runs
    :func:`training_step`. The learning rate falls from ``lr`` to ``lr_end`` along a cosine
    (large steps first, small steps to settle).

    **Arguments:**

    - `func`: the model field, an ``nn.Module`` (trained in place).
    - `data`: the observed :class:`Trajectory` (on ``func``'s device and dtype).
    - `iterations`: the number of gradient steps.
    - `batch_size`, `window`: the mini-batch, as for :func:`sample_windows`.
    - `lr`, `lr_end`: Adam's first and last learning rate.
    - `seed`: seeds the choice of windows; with the same initial ``func`` the run is repeatable.
    - `solver`, `loss_fn`: as for :func:`training_step`.
    - `rtol`, `atol`, `solve_kwargs`: passed to ``solver``.
    - `progress`: show a progress bar (``tqdm.auto``, if installed).
    - `callback`: called as ``callback(iteration, func, loss)`` after every iteration.

    **Returns:** the mini-batch loss of every iteration, a list of ``iterations`` floats.

    Introduced in the chapter "Training a Neural ODE with the adjoint".
    """
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    optimizer = torch.optim.Adam(func.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=iterations, eta_min=lr_end)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for iteration in _progress_bar(range(iterations), progress, "training"):
        z0, t, targets = sample_windows(data.t, data.z, batch_size, window, generator)
        loss = training_step(func, optimizer, z0, t, targets, solver=solver, loss_fn=loss_fn,
                             rtol=rtol, atol=atol, **solve_kwargs)
        schedule.step()
        history.append(loss)
        if callback is not None:
            callback(iteration, func, loss)
    return history
