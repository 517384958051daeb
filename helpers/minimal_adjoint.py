"""The adjoint method in one short function: fixed Runge–Kutta steps, forward and backward.

:func:`helpers.odeint_adjoint` is the production version: adaptive steps, observation times,
checkpoints, time gradients, batches with per-sample steps and a compiled mode. All of that
hides a small core, and this module is that core alone, for reading:

1. solve ``dz/dt = f(t, z)`` from ``z0`` to ``t1`` with classical RK4 steps, keeping no graph;
2. evaluate the loss at ``z(t1)`` and its gradient ``λ(t1) = ∂L/∂z(t1)``;
3. solve the augmented system ``[z, λ, a_θ]`` back from ``t1`` to ``t0`` with the same steps,

       dz/dt   =  f(t, z),        z(t1)   = the forward result
       dλ/dt   = -λ ∂f/∂z,        λ(t1)   = ∂L/∂z(t1)
       da_θ/dt = -λ ∂f/∂θ,        a_θ(t1) = 0,

   where both products with λ come from one ``torch.autograd.grad`` call, a vector–Jacobian
   product; then ``λ(t0) = dL/dz0`` and ``a_θ(t0) = dL/dθ``.

With ``method="rk4"`` and the same step, :func:`helpers.odeint_adjoint` takes the same steps and
returns the same numbers to rounding.

Introduced in the chapter "The adjoint algorithm".
"""
from __future__ import annotations

import numbers
from typing import Callable, List, Sequence

import torch
from torch import nn


def rk4_step(rhs: Callable, t: float, state: Sequence[torch.Tensor],
             h: float) -> List[torch.Tensor]:
    """One classical Runge–Kutta step on a state made of several tensors.

    **Arguments:**

    - `rhs`: ``rhs(t, state)`` returns the time derivative of each tensor of ``state``, as a list.
    - `t`: the time at the start of the step.
    - `state`: the tensors at time ``t``.
    - `h`: the step; negative to step backward in time.

    **Returns:** the list of tensors at time ``t + h``.

    Introduced in the chapter "The adjoint algorithm".
    """
    def shifted(k, c):  # state + c * k, tensor by tensor
        return [y + c * dy for y, dy in zip(state, k)]

    k1 = rhs(t, state)
    k2 = rhs(t + h / 2, shifted(k1, h / 2))
    k3 = rhs(t + h / 2, shifted(k2, h / 2))
    k4 = rhs(t + h, shifted(k3, h))
    return [y + h / 6 * (a + 2 * b + 2 * c + d)
            for y, a, b, c, d in zip(state, k1, k2, k3, k4)]


def _check(func, z0, t0, t1, steps):
    if not isinstance(func, nn.Module):
        raise TypeError(f"func must be a torch.nn.Module (its parameters are θ), got {type(func).__name__}")
    if not isinstance(z0, torch.Tensor) or not z0.dtype.is_floating_point:
        raise TypeError(f"z0 must be a floating-point tensor, got {type(z0).__name__}")
    for name, value in (("t0", t0), ("t1", t1)):
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise TypeError(f"{name} must be a real number (a Python float), got {type(value).__name__}")
    if t0 == t1:
        raise ValueError(f"t0 and t1 must differ, got t0 = t1 = {t0}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")


def minimal_adjoint(func: nn.Module, z0: torch.Tensor, t0: float,
                    t1: float, loss_fn: Callable, steps: int = 100):
    """The loss and its gradients by the adjoint method, in fixed RK4 steps (a reading version).

    **Arguments:**

    - `func`: the vector field, an ``nn.Module`` called as ``func(t, z)`` with ``t`` a Python
      float; θ is its parameters that require a gradient, and each must be used by ``func``.
    - `z0`: the initial state at ``t0``, a floating-point tensor of any shape (a batch is fine).
    - `t0`, `t1`: the two ends of the solve, real numbers, ``t0 != t1``.
    - `loss_fn`: ``loss_fn(z1)`` returns the scalar loss of the state at ``t1``.
    - `steps`: the number of equal RK4 steps, forward and again backward (a positive integer).

    **Returns:** ``(loss, dL_dz0, dL_dtheta)``: the loss (a detached scalar tensor), the gradient
    with respect to ``z0`` (λ(t0), shaped like ``z0``) and the gradients with respect to the
    parameters (a_θ(t0), a list shaped like the parameters).

    **Raises:** ``TypeError`` for a ``func`` that is not a module, a ``z0`` that is not a
    floating-point tensor, or times that are not real numbers; ``ValueError`` for ``t0 == t1`` or
    a ``steps`` that is not a positive integer.

    Introduced in the chapter "The adjoint algorithm".
    """
    _check(func, z0, t0, t1, steps)
    params = [p for p in func.parameters() if p.requires_grad]
    h = (t1 - t0) / steps

    def augmented(t, state):  # [z, λ, a_θ (a tensor per parameter)]
        with torch.enable_grad():
            z = state[0].detach().requires_grad_(True)
            f = func(t, z)
            # one reverse pass gives -λ ∂f/∂z and -λ ∂f/∂θ
            vjps = torch.autograd.grad(f, [z, *params],
                                       grad_outputs=-state[1])
        return [f.detach(), *vjps]

    def forward(t, state):  # [z]
        return [func(t, state[0])]

    with torch.no_grad():  # 1. forward, no graph: keep z(t1) only
        state = [z0.detach()]
        for k in range(steps):
            state = rk4_step(forward, t0 + k * h, state, h)
    with torch.enable_grad():  # 2. the loss and λ(t1) = ∂L/∂z(t1)
        z1 = state[0].requires_grad_(True)
        loss = loss_fn(z1)
        (lam,) = torch.autograd.grad(loss, z1)
    # 3. backward from [z(t1), λ(t1), 0] at t1 to t0
    state = [z1.detach(), lam, *map(torch.zeros_like, params)]
    with torch.no_grad():
        for k in range(steps):
            state = rk4_step(augmented, t1 - k * h, state, -h)
    return loss.detach(), state[1], state[2:]
