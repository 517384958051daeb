"""How much memory an autograd graph keeps for the backward pass, and how it grows.

Reverse-mode autodiff must keep, from the forward pass, every tensor that some backward formula
needs (``x * y`` keeps ``x`` and ``y``; ``tanh`` keeps its output). PyTorch hands each such tensor
to the hooks of :class:`torch.autograd.graph.saved_tensors_hooks` as it is saved, which lets us
measure the graph exactly, on any device, without asking the allocator.

Introduced in the chapter "The problem".
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch


@dataclass
class SavedTensors:
    """What :func:`saved_tensors` measured.

    **Fields:**

    - `result`: what the measured function returned, if it was asked for with
      ``keep_result=True`` (it then holds the graph alive); otherwise ``None``.
    - `nbytes`: the bytes of the distinct storages that the graph still keeps for backward.
    - `count`: how many distinct storages those are.

    Introduced in the chapter "The problem".
    """

    result: Any
    nbytes: int
    count: int


def saved_tensors(fn: Callable, *args, keep_result: bool = False, **kwargs) -> SavedTensors:
    """Run ``fn(*args, **kwargs)`` and measure the tensors its autograd graph saved for backward.

    Each storage is counted once, by its address (``x * x`` saves ``x`` twice but keeps one
    copy), and counted whole (a saved view keeps its whole base alive). A tensor saved by a part
    of the graph that was thrown away before ``fn`` returned (a rejected step of an adaptive
    solver, say) is freed with it and is not counted: only what is still alive when ``fn``
    returns counts. Tensors a graph holds without saving them through autograd (attributes a
    custom ``autograd.Function`` sets on ``ctx`` directly) are not seen.

    The measurement itself keeps nothing: the hooks hand the graph a detached alias of each
    saved tensor (same storage, no ``grad_fn``), so a saved output does not hold its own node in
    a reference cycle, and the graph is freed as soon as the result is dropped.

    **Arguments:**

    - `fn`: the computation to measure, e.g. a forward pass that returns a loss.
    - `args`, `kwargs`: passed to ``fn``.
    - `keep_result`: return ``fn``'s result (and with it its graph, ready for ``backward``);
      by default it is dropped after measuring, which frees the graph.

    **Returns:** a :class:`SavedTensors` with the bytes kept, the number of distinct storages,
    and ``fn``'s result if ``keep_result`` is true.

    Introduced in the chapter "The problem".
    """
    seen: list = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        # the graph holds this alias; it dies when the part of the graph that saved it is freed
        alias = tensor.detach()
        seen.append(weakref.ref(alias))
        return alias

    def unpack(alias: torch.Tensor) -> torch.Tensor:
        return alias

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        result = fn(*args, **kwargs)

    storages = {}
    for ref in seen:
        alias = ref()
        if alias is None:
            continue
        storage = alias.untyped_storage()
        storages[(alias.device, storage.data_ptr())] = storage.nbytes()
    nbytes, count = sum(storages.values()), len(storages)
    return SavedTensors(result=result if keep_result else None, nbytes=nbytes, count=count)


def graph_memory(fn: Callable, *args, **kwargs) -> int:
    """The bytes that the autograd graph of ``fn(*args, **kwargs)`` keeps for backward.

    The result of ``fn`` is dropped after measuring, which frees its graph.

    **Arguments:** ``fn`` and its arguments, as for :func:`saved_tensors`.

    **Returns:** the number of bytes (an ``int``).

    Introduced in the chapter "The problem".
    """
    return saved_tensors(fn, *args, **kwargs).nbytes


@dataclass
class LineFit:
    """A least-squares line ``y ≈ slope * x + intercept``.

    **Fields:** `slope`, `intercept`, and `r_squared`, the coefficient of determination
    (1 for points exactly on a line; defined as 1 when every ``y`` is equal and the fit is exact).

    Introduced in the chapter "The problem".
    """

    slope: float
    intercept: float
    r_squared: float

    def __call__(self, x: float) -> float:
        return self.slope * x + self.intercept


def fit_line(x: Sequence[float], y: Sequence[float]) -> LineFit:
    """Fit ``y ≈ slope * x + intercept`` by least squares, to test how memory grows.

    **Arguments:**

    - `x`, `y`: equally long sequences of numbers, at least two, with at least two distinct ``x``.

    **Returns:** a :class:`LineFit`.

    Introduced in the chapter "The problem".
    """
    x = [float(v) for v in x]
    y = [float(v) for v in y]
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    n = len(x)
    if n < 2:
        raise ValueError("need at least two points to fit a line")
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    if sxx == 0:
        raise ValueError("x must hold at least two distinct values")
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    slope = sxy / sxx
    intercept = my - slope * mx
    ss_res = sum((b - (slope * a + intercept)) ** 2 for a, b in zip(x, y))
    ss_tot = sum((b - my) ** 2 for b in y)
    if ss_tot == 0:
        r_squared = 1.0 if ss_res == 0 else 0.0
    else:
        r_squared = 1.0 - ss_res / ss_tot
    if not math.isfinite(r_squared):
        raise ValueError("x and y must be finite")
    return LineFit(slope=slope, intercept=intercept, r_squared=r_squared)
