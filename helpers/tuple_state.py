"""States that are tuples of tensors, as torchdiffeq accepts them.

``odeint`` and ``odeint_adjoint`` solve one tensor. A tuple ``y0 = (a, b, ...)`` (a continuous
normalising flow carries the sample and its log-density change, for instance) is flattened into
one 1-D tensor; ``func`` is wrapped so that it still receives and returns tuples; the solution is
split back into one tensor per member, each of shape ``(len(t), *y0[i].shape)``. Gradients reach
every member, ``t`` and the parameters through the flat solve unchanged.

Introduced in the chapter "Neural ODEs and the forward pass".
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import nn


class TupleFunc(nn.Module):
    """``func`` on tuples seen as a vector field on the flat state.

    **Arguments:**

    - `func`: called as ``func(t, (y_1, ..., y_k))``; returns a tuple (or list) of ``k`` tensors,
      the i-th with ``y_i``'s shape, dtype and device.
    - `shapes`: the shapes of the members of the state.
    - `dtype`: the dtype that every member of ``func``'s result must have.

    If ``func`` is an ``nn.Module`` it becomes a submodule, so ``parameters()`` (the default
    ``adjoint_params`` of :func:`helpers.odeint_adjoint`) are its parameters.

    Not shown in the book; it extends the chapter "Neural ODEs and the forward pass".
    """

    def __init__(self, func: Callable, shapes, dtype: torch.dtype):
        super().__init__()
        self.base = func
        self.shapes = tuple(torch.Size(s) for s in shapes)
        self.sizes = [s.numel() for s in self.shapes]
        self.dtype = dtype
        self._checked = False

    def split(self, y: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """View the flat state ``y`` as a tuple with the members' shapes."""
        return tuple(part.view(shape) for part, shape in zip(torch.split(y, self.sizes), self.shapes))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.base(t, self.split(y))
        if not self._checked:
            self._check(out, y.device)
            self._checked = True
        return torch.cat([o.reshape(-1) for o in out])

    def _check(self, out, device) -> None:
        k = len(self.shapes)
        if not isinstance(out, (tuple, list)):
            raise TypeError(
                f"y0 is a tuple of {k} tensors, so func(t, y) must return a tuple of {k} tensors; "
                f"got {type(out).__name__}")
        if len(out) != k:
            raise ValueError(f"y0 is a tuple of {k} tensors but func(t, y) returned {len(out)}")
        for i, (o, shape) in enumerate(zip(out, self.shapes)):
            if not isinstance(o, torch.Tensor):
                raise TypeError(f"func(t, y)[{i}] must be a tensor, got {type(o).__name__}")
            if o.shape != shape:
                raise ValueError(
                    f"func(t, y)[{i}] has shape {tuple(o.shape)} but y0[{i}] has shape {tuple(shape)}; "
                    "each member of func's result must have its state member's shape")
            if o.dtype != self.dtype:
                raise ValueError(f"func(t, y)[{i}] has dtype {o.dtype} but y0 has dtype {self.dtype}; they must match")
            if o.device != device:
                raise ValueError(f"func(t, y)[{i}] is on {o.device} but y0 is on {device}")


def tuple_options(options, func):
    """``options`` with a callable ``norm`` made to receive the error as a tuple, as torchdiffeq
    hands it over for a tuple state; anything else unchanged.

    **Arguments:** `options` as the user gave them; `func` as :func:`flatten_state` returned it.

    **Returns:** the options to check and use.

    Not shown in the book; it extends the chapter "Neural ODEs and the forward pass".
    """
    if isinstance(func, TupleFunc) and isinstance(options, dict) and callable(options.get("norm")):
        user_norm = options["norm"]
        return {**options, "norm": lambda error: user_norm(func.split(error.reshape(-1)))}
    return options


def flatten_state(func: Callable, y0) -> Tuple[Callable, torch.Tensor, Optional[Callable]]:
    """Turn a tuple state into one tensor; leave a tensor state alone.

    **Arguments:**

    - `func`: the vector field, taking and returning tuples when ``y0`` is a tuple.
    - `y0`: a tensor, or a non-empty tuple of floating-point tensors of one dtype on one device.

    **Returns:** ``(func, y0, unflatten)``: for a tensor ``y0`` the arguments themselves and
    ``None``; for a tuple a :class:`TupleFunc`, the concatenated flat ``y0``, and a function that
    turns a flat solution of shape ``(len(t), n)`` into a tuple of tensors of shapes
    ``(len(t), *y0[i].shape)``.

    Not shown in the book; it extends the chapter "Neural ODEs and the forward pass".
    """
    if not isinstance(y0, tuple):
        return func, y0, None
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y), got {type(func).__name__}")
    if len(y0) == 0:
        raise ValueError("y0 is an empty tuple; give at least one tensor")
    for i, y in enumerate(y0):
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y0[{i}] must be a torch.Tensor, got {type(y).__name__}")
        if not y.dtype.is_floating_point:
            raise TypeError(f"y0[{i}] must be a real floating-point tensor, got dtype {y.dtype}")
    dtype, device = y0[0].dtype, y0[0].device
    for i, y in enumerate(y0[1:], start=1):
        if y.dtype != dtype:
            raise TypeError(
                f"the members of the tuple y0 must share one dtype: y0[0] is {dtype} but y0[{i}] is {y.dtype}; "
                "cast them to one dtype")
        if y.device != device:
            raise ValueError(
                f"the members of the tuple y0 must be on one device: y0[0] is on {device} but y0[{i}] is on {y.device}")
    shapes = [y.shape for y in y0]
    flat = torch.cat([y.reshape(-1) for y in y0])
    wrapped = TupleFunc(func, shapes, dtype)

    def unflatten(ys: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        n = ys.shape[0]
        return tuple(part.reshape(n, *shape) for part, shape in zip(torch.split(ys, wrapped.sizes, dim=1), shapes))

    return wrapped, flat, unflatten
