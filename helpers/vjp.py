"""Vector–Jacobian products λ ∂f/∂z and λ ∂f/∂θ, three ways, and a small timer.

The backward solve of the adjoint method needs, at every step, the row vectors λ ∂f/∂z (1×d) and
λ ∂f/∂θ (1×p). Reverse-mode automatic differentiation gives both from one backward pass through
``f`` with λ as the incoming gradient, without forming either Jacobian:

- :func:`vjp_autograd`: ``torch.autograd.grad(f, (z, *θ), grad_outputs=λ)``;
- :func:`vjp_func`: ``torch.func.vjp``, the functional form of the same computation;
- :func:`vjp_via_jacobian`: the expensive reference, which builds ∂f/∂z (d×d) and ∂f/∂θ (d×p)
  with ``torch.func.jacrev`` and then multiplies λ into them.

All three take ``func(t, z)`` (an ``nn.Module``, whose trainable parameters are θ, or a plain
callable, which has none) and return ``(λ ∂f/∂z, (λ ∂f/∂θ_1, λ ∂f/∂θ_2, ...))`` with one entry per
parameter tensor, in the order of ``func.parameters()``. States follow PyTorch's layout: ``z`` and
``λ`` have the same shape, e.g. ``(batch, d)`` with one row per state; the parameter products are
then summed over the batch, Σ_b λ_b ∂f_b/∂θ.

Introduced in the chapter "Vector–Jacobian products".
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Hashable, Mapping, Tuple

import torch
from torch import nn
from torch.func import functional_call, jacrev, vjp

VJPs = Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]


def _named_params(func: Callable):
    if isinstance(func, nn.Module):
        named = [(n, p) for n, p in func.named_parameters() if p.requires_grad]
        return [n for n, _ in named], [p for _, p in named]
    return [], []


def _check(z: torch.Tensor, lam: torch.Tensor) -> None:
    if z.shape != lam.shape:
        raise ValueError(f"lam must have z's shape {tuple(z.shape)}, got {tuple(lam.shape)}")


def vjp_autograd(func: Callable, t: torch.Tensor, z: torch.Tensor, lam: torch.Tensor) -> VJPs:
    """λ ∂f/∂z and λ ∂f/∂θ from one reverse pass with ``torch.autograd.grad``.

    **Arguments:**

    - `func`: the vector field ``func(t, z)``; its trainable parameters are θ.
    - `t`: the time, a 0-d tensor.
    - `z`: the state, any shape (a batch of rows ``(batch, d)`` is fine).
    - `lam`: the adjoint λ, the shape of ``z``.

    **Returns:** ``(lam_dfdz, lam_dfdtheta)``: a tensor shaped like ``z`` and a tuple with one
    tensor per parameter, shaped like it. No graph is kept.

    Introduced in the chapter "Vector–Jacobian products".
    """
    _check(z, lam)
    _, params = _named_params(func)
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        f = func(t, z)
        # allow_unused: a parameter that f does not touch gets a zero product, not an error
        grads = torch.autograd.grad(f, (z, *params), grad_outputs=lam, allow_unused=True)
    grads = tuple(torch.zeros_like(x) if g is None else g for x, g in zip((z, *params), grads))
    return grads[0], tuple(grads[1:])


def vjp_func(func: Callable, t: torch.Tensor, z: torch.Tensor, lam: torch.Tensor) -> VJPs:
    """λ ∂f/∂z and λ ∂f/∂θ with ``torch.func.vjp``, treating ``f`` as a function of ``(z, θ)``.

    **Arguments:** as :func:`vjp_autograd`.

    **Returns:** as :func:`vjp_autograd`.

    Introduced in the chapter "Vector–Jacobian products".
    """
    _check(z, lam)
    names, params = _named_params(func)

    def f_of(z_, *ps):
        if not names:
            return func(t, z_)
        return functional_call(func, dict(zip(names, ps)), (t, z_))

    _, pullback = vjp(f_of, z.detach(), *(p.detach() for p in params))
    grads = pullback(lam)
    return grads[0], tuple(grads[1:])


def jacobians(func: Callable, t: torch.Tensor, z: torch.Tensor):
    """The full Jacobians ∂f/∂z and ∂f/∂θ, built with ``torch.func.jacrev``.

    **Arguments:** `func`, `t`, `z` as :func:`vjp_autograd`.

    **Returns:** ``(J_z, J_theta)``: ``J_z`` has shape ``f.shape + z.shape`` (``(d, d)`` for a
    single state of shape ``(d,)``) and ``J_theta`` is a tuple with one tensor of shape
    ``f.shape + p.shape`` per parameter ``p``.

    Introduced in the chapter "Vector–Jacobian products".
    """
    names, params = _named_params(func)

    def f_of(z_, *ps):
        if not names:
            return func(t, z_)
        return functional_call(func, dict(zip(names, ps)), (t, z_))

    argnums = tuple(range(1 + len(params)))
    jac = jacrev(f_of, argnums=argnums)(z.detach(), *(p.detach() for p in params))
    return jac[0], tuple(jac[1:])


def vjp_via_jacobian(func: Callable, t: torch.Tensor, z: torch.Tensor, lam: torch.Tensor) -> VJPs:
    """λ ∂f/∂z and λ ∂f/∂θ the expensive way: build both Jacobians, then multiply λ into them.

    **Arguments:** as :func:`vjp_autograd`.

    **Returns:** as :func:`vjp_autograd`.

    Introduced in the chapter "Vector–Jacobian products".
    """
    _check(z, lam)
    J_z, J_theta = jacobians(func, t, z)
    k = lam.dim()  # contract λ against the output dimensions of each Jacobian
    lam_dfdz = torch.tensordot(lam, J_z, dims=k)
    return lam_dfdz, tuple(torch.tensordot(lam, J, dims=k) for J in J_theta)


def time_call(fn: Callable[[], object], *, repeats: int = 5, min_time: float = 0.01, warmup: int = 1) -> float:
    """The median wall-clock time of one call of ``fn()``, in seconds.

    Each of ``repeats`` measurements runs ``fn`` enough times back to back to last at least
    ``min_time`` seconds (so that very fast calls are not lost in the timer's resolution) and
    divides by the count; the median of the measurements resists the outliers that other
    processes on the machine cause.

    **Arguments:**

    - `fn`: a function of no arguments.
    - `repeats`: how many measurements to take the median of.
    - `min_time`: the least duration of one measurement, in seconds.
    - `warmup`: untimed calls made first (caches, lazy initialisation).

    **Returns:** seconds per call, a float.

    Introduced in the chapter "Vector–Jacobian products".
    """
    return time_calls({"fn": fn}, repeats=repeats, min_time=min_time, warmup=warmup)["fn"]


def time_calls(fns: Mapping[Hashable, Callable[[], object]], *, repeats: int = 5,
               min_time: float = 0.01, warmup: int = 1) -> dict:
    """The median wall-clock time of one call of each of several functions, measured in turns.

    As :func:`time_call`, but the measurements alternate: each round measures every function
    once, so a slow spell of a shared machine falls on all of them alike instead of on whichever
    was being timed then, and ratios of the results keep steady.

    **Arguments:** `fns`, a key to a function of no arguments; the rest as for
    :func:`time_call`.

    **Returns:** a ``dict`` from each key to its seconds per call.

    Introduced in the chapter "Vector–Jacobian products".
    """
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    number = {}
    for key, fn in fns.items():
        for _ in range(warmup):
            fn()
        start = time.perf_counter()
        fn()
        once = time.perf_counter() - start
        number[key] = max(1, int(min_time / max(once, 1e-9)))
    samples = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            for _ in range(number[key]):
                fn()
            samples[key].append((time.perf_counter() - start) / number[key])
    return {key: statistics.median(v) for key, v in samples.items()}
