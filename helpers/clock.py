"""Fitting times by gradient descent: the descent loop and the finite differences that check it.

The times of a solve (its final time, its initial time, the observation times, the time of an
event) get their gradients from :func:`helpers.odeint_adjoint`, :func:`helpers.odeint` and
:func:`helpers.odeint_event`. This module holds what a fit of those times needs besides: a plain
gradient-descent loop that records its path, and central differences to check each gradient.

Introduced in the chapter "Learning the clock: fitting times by their gradients".
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

__all__ = ["Descent", "descend", "central_difference"]


class Descent(NamedTuple):
    """The path of :func:`descend`.

    - ``xs``: the iterates ``x_0, ..., x_K``, shape ``(K + 1, n)``;
    - ``losses``: the loss at each iterate, shape ``(K + 1,)``;
    - ``grads``: the gradient used at each step, shape ``(K, n)``.

    Introduced in the chapter "Learning the clock: fitting times by their gradients".
    """

    xs: torch.Tensor
    losses: torch.Tensor
    grads: torch.Tensor


def _vector(name: str, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if x.dim() != 1 or x.numel() == 0 or not x.is_floating_point():
        raise ValueError(f"{name} must be a non-empty 1-D floating-point tensor, "
                         f"got shape {tuple(x.shape)} and dtype {x.dtype}")
    return x.detach().clone()


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return float(value)


def descend(loss_and_grad: Callable, x0: torch.Tensor, lr: float, steps: int) -> Descent:
    """Plain gradient descent, ``x_{k+1} = x_k - lr * grad(x_k)``, with its path recorded.

    **Arguments:**

    - `loss_and_grad`: ``x -> (loss, grad)`` for a 1-D tensor ``x`` (a detached copy): the loss
      as a number or 0-d tensor and its gradient as a tensor of ``x``'s shape. Whatever computes
      the gradient (an adjoint solve, a sign flipped on purpose) is the caller's choice.
    - `x0`: the starting point, a non-empty 1-D floating-point tensor.
    - `lr`: the step size, a positive number.
    - `steps`: the number of steps, a positive integer.

    **Returns:** a :class:`Descent` ``(xs, losses, grads)``; the loss at the last iterate costs
    one more call of ``loss_and_grad``.

    **Raises:** ``TypeError`` or ``ValueError`` for arguments of the wrong kind, and
    ``ValueError`` when ``loss_and_grad`` returns a gradient of the wrong shape or a loss or
    gradient that is not finite (the step is then too large).

    Introduced in the chapter "Learning the clock: fitting times by their gradients".
    """
    if not callable(loss_and_grad):
        raise TypeError(f"loss_and_grad must be callable, got {type(loss_and_grad).__name__}")
    x = _vector("x0", x0)
    lr = _positive("lr", lr)
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be a positive integer, got {type(steps).__name__}")
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")

    def evaluate(k, x):
        loss, grad = loss_and_grad(x.clone())
        loss = float(loss)
        if not isinstance(grad, torch.Tensor):
            raise TypeError(f"loss_and_grad must return (loss, grad tensor), got a "
                            f"{type(grad).__name__} for the gradient")
        grad = grad.detach().to(x.dtype)
        if grad.shape != x.shape:
            raise ValueError(f"loss_and_grad returned a gradient of shape {tuple(grad.shape)} "
                             f"for x of shape {tuple(x.shape)}")
        if not (math.isfinite(loss) and torch.isfinite(grad).all()):
            raise ValueError(f"the loss or its gradient is not finite at step {k}: "
                             f"lower lr")
        return loss, grad

    xs, losses, grads = [x.clone()], [], []
    for k in range(steps):
        loss, grad = evaluate(k, x)
        losses.append(loss)
        grads.append(grad)
        x = x - lr * grad
        xs.append(x.clone())
    losses.append(evaluate(steps, x)[0])
    return Descent(torch.stack(xs), torch.tensor(losses, dtype=x.dtype), torch.stack(grads))


def central_difference(loss: Callable, x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """The gradient of a scalar ``loss(x)`` by central differences, one entry of ``x`` at a time.

    Entry ``i`` is ``(loss(x + eps e_i) - loss(x - eps e_i)) / (2 eps)``, whose error is of order
    ``eps**2`` times the third derivative, plus the loss's own error divided by ``eps``.

    **Arguments:**

    - `loss`: ``x -> number`` (or 0-d tensor), called on detached copies of ``x``.
    - `x`: the point, a non-empty 1-D floating-point tensor.
    - `eps`: the step, a positive number.

    **Returns:** a tensor of ``x``'s shape and dtype.

    **Raises:** ``TypeError`` or ``ValueError`` for arguments of the wrong kind.

    Introduced in the chapter "Learning the clock: fitting times by their gradients".
    """
    if not callable(loss):
        raise TypeError(f"loss must be callable, got {type(loss).__name__}")
    x = _vector("x", x)
    eps = _positive("eps", eps)
    out = torch.empty_like(x)
    for i in range(x.numel()):
        bump = torch.zeros_like(x)
        bump[i] = eps
        out[i] = (float(loss(x + bump)) - float(loss(x - bump))) / (2 * eps)
    return out
