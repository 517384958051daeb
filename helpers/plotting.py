"""Pictures of planar ODEs: a vector field on a grid, and trajectories through it.

Everything here is for two-dimensional states, drawn as the plane (z_1, z_2). States follow
PyTorch's layout: a batch of states is a tensor of shape ``(batch, 2)``, one row per state, and a
solve from ``odeint`` has shape ``(len(t), batch, 2)``.

Introduced in the chapter "Neural ODEs and the forward pass".
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import numpy as np
import torch


def _field_dtype(func: Callable, dtype: Optional[torch.dtype]) -> torch.dtype:
    """The dtype to evaluate ``func`` in: the one asked for, else that of its weights, else the default."""
    if dtype is not None:
        return dtype
    if isinstance(func, torch.nn.Module):
        for tensor in list(func.parameters()) + list(func.buffers()):
            if tensor.dtype.is_floating_point:
                return tensor.dtype
    return torch.get_default_dtype()


def evaluate_on_grid(
    func: Callable,
    xlim: Tuple[float, float],
    ylim: Tuple[float, float],
    n: int = 20,
    t: float = 0.0,
    dtype: Optional[torch.dtype] = None,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Evaluate a planar vector field on an ``n`` by ``n`` grid of points.

    **Arguments:**

    - `func`: the vector field, called once as ``func(t, z)`` on all grid points at once, with
      ``z`` a batch of rows of shape ``(n * n, 2)``.
    - `xlim`, `ylim`: the ranges of the first and second coordinate, ends included.
    - `n`: points per axis.
    - `t`: the time at which to evaluate the field.
    - `dtype`: the dtype of the grid; by default that of ``func``'s weights.

    **Returns:** ``(X, Y, U, V)``, each an ``(n, n)`` array: the grid coordinates and the two
    components of ``func`` there (``X[i, j]`` grows with ``j``, ``Y[i, j]`` with ``i``).

    Introduced in the chapter "Training a Neural ODE with the adjoint".
    """
    if len(xlim) != 2 or len(ylim) != 2 or not (xlim[0] < xlim[1] and ylim[0] < ylim[1]):
        raise ValueError(f"xlim and ylim must each be (low, high) with low < high, got {xlim!r} and {ylim!r}")
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    dtype = _field_dtype(func, dtype)
    xs = torch.linspace(float(xlim[0]), float(xlim[1]), n, dtype=dtype)
    ys = torch.linspace(float(ylim[0]), float(ylim[1]), n, dtype=dtype)
    Y, X = torch.meshgrid(ys, xs, indexing="ij")
    z = torch.stack([X.reshape(-1), Y.reshape(-1)], dim=1)  # (n * n, 2): one row per point
    with torch.no_grad():
        dz = func(torch.tensor(float(t), dtype=dtype), z)
    if tuple(dz.shape) != (n * n, 2):
        raise ValueError(f"func must map a batch of shape ({n * n}, 2) to the same shape, got {tuple(dz.shape)}")
    U, V = dz[:, 0].reshape(n, n), dz[:, 1].reshape(n, n)
    return tuple(a.detach().cpu().numpy() for a in (X, Y, U, V))


def plot_vector_field(
    ax,
    func: Callable,
    xlim: Tuple[float, float],
    ylim: Tuple[float, float],
    n: int = 20,
    t: float = 0.0,
    normalize: bool = False,
    dtype: Optional[torch.dtype] = None,
    **quiver_kwargs,
):
    """Draw the arrows of a planar vector field ``dz/dt = func(t, z)`` on a grid.

    **Arguments:**

    - `ax`: the matplotlib axes to draw on.
    - `func`, `xlim`, `ylim`, `n`, `t`, `dtype`: as for :func:`evaluate_on_grid`.
    - `normalize`: if true, every arrow has the same length and its colour shows the speed
      ``|func(t, z)|`` (useful when speeds differ by orders of magnitude); otherwise arrow
      lengths are proportional to the speed.
    - `quiver_kwargs`: passed on to ``ax.quiver`` (e.g. ``color``, ``alpha``, ``scale``).

    **Returns:** the ``Quiver`` artist (``n * n`` arrows). The axes' limits are set to
    ``xlim`` and ``ylim`` and its axes are labelled z₁ and z₂.

    Introduced in the chapter "Neural ODEs and the forward pass".
    """
    X, Y, U, V = evaluate_on_grid(func, xlim, ylim, n=n, t=t, dtype=dtype)
    if normalize:
        speed = np.hypot(U, V)
        safe = np.where(speed > 0, speed, 1.0)
        quiver_kwargs.setdefault("cmap", "viridis")
        quiver = ax.quiver(X, Y, U / safe, V / safe, speed, **quiver_kwargs)
    else:
        quiver_kwargs.setdefault("color", "0.55")
        quiver = ax.quiver(X, Y, U, V, **quiver_kwargs)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    return quiver


def plot_trajectories(
    ax,
    ys,
    color=None,
    label: Optional[str] = None,
    mark_start: bool = True,
    **plot_kwargs,
) -> List:
    """Draw solution curves in the plane (z₁, z₂).

    **Arguments:**

    - `ax`: the matplotlib axes to draw on.
    - `ys`: the states along the solutions, a tensor or array of shape ``(T, 2)`` (one
      trajectory) or ``(T, batch, 2)`` (as ``odeint`` returns for a batch of rows).
    - `color`: one colour for every trajectory; by default matplotlib's colour cycle.
    - `label`: the legend entry, given to the first trajectory only.
    - `mark_start`: if true, put a dot at each initial state.
    - `plot_kwargs`: passed on to ``ax.plot`` (e.g. ``lw``, ``alpha``).

    **Returns:** the list of ``Line2D`` artists, one per trajectory (the start markers are
    drawn as one extra scatter collection, not returned).

    Introduced in the chapter "Neural ODEs and the forward pass".
    """
    arr = ys.detach().cpu().numpy() if isinstance(ys, torch.Tensor) else np.asarray(ys)
    if arr.ndim == 2:
        arr = arr[:, None, :]
    if arr.ndim != 3 or arr.shape[-1] != 2:
        raise ValueError(f"ys must have shape (T, 2) or (T, batch, 2), got {tuple(arr.shape)}")
    lines = []
    for k in range(arr.shape[1]):
        kwargs = dict(plot_kwargs)
        if color is not None:
            kwargs["color"] = color
        (line,) = ax.plot(arr[:, k, 0], arr[:, k, 1], label=label if k == 0 else None, **kwargs)
        lines.append(line)
    if mark_start:
        starts = [line.get_color() for line in lines]
        ax.scatter(arr[0, :, 0], arr[0, :, 1], c=starts, s=14, zorder=3)
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    return lines

