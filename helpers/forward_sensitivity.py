"""Forward sensitivities: ``helpers.odeint(..., gradient="forward")``.

The forward solve integrates, beside the state z, its sensitivities
S = ∂z/∂(z0, θ), one column per input direction,

    dz/dt = f(z, θ, t)
    dS/dt = ∂f/∂z S + [0, ∂f/∂θ]         S(t0) = [I, 0],

each column being a Jacobian–vector product of ``f`` (forward mode, ``torch.func.jvp``, vmapped
over the d + p directions): the cost of every step grows with d + p, and no autograd graph of
the steps is kept, only S at the requested times. The backward pass is then a contraction,
dL/dz0 = Σ_i ∂L/∂z(t_i) S_z(t_i) and dL/dθ = Σ_i ∂L/∂z(t_i) S_θ(t_i); the time gradients are the
boundary form (:func:`helpers.odeint.times_by_boundary_form`).

Introduced in the chapter "Choosing a gradient method, by measurement".
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .adjoint import UntrackedGradientGuard
from .odeint import one_time_solution, times_by_boundary_form
from .solve import CALLBACKS, _check_output, integrate
from .stats import StepCounter
from .steppers import resolve_compile

GRADIENTS = ("backprop", "forward")


class SensitivityField:
    """The right-hand side of the forward solve on the flat state ``[z, S]``.

    **Arguments:**

    - `func`: the vector field ``func(t, z)``.
    - `shape`: the shape of ``z``.
    - `params`: the parameters θ (registered in ``func`` under `names`).
    - `names`: their names in ``func`` (an ``nn.Module``), or ``None`` when there are none.
    - `tangents`: for each parameter, its tangent in every direction, shape
      ``(m, *p.shape)`` (one-hot for θ's own directions, zero for the z0 directions).

    ``S`` is stored as ``m`` tangents of z's shape, ``m`` the number of directions. Each call
    costs one evaluation of ``func`` vmapped over the ``m`` Jacobian–vector products.

    Introduced in the chapter "Choosing a gradient method, by measurement".
    """

    def __init__(self, func: Callable, shape: torch.Size, params: Sequence[torch.Tensor],
                 names: Optional[tuple], tangents: Sequence[torch.Tensor]):
        self.func, self.shape, self.params, self.names = func, torch.Size(shape), tuple(params), names
        self.tangents = tuple(tangents)
        self.n = self.shape.numel()
        self.m = len(tangents[0]) if tangents else None

    def __call__(self, t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        n, func, names = self.n, self.func, self.names
        z = state[:n].view(self.shape)
        S = state[n:].view(-1, *self.shape)

        def f_of(z_, *ps):
            if names is None:
                return func(t, z_)
            return torch.func.functional_call(func, dict(zip(names, ps)), (t, z_), strict=False)

        def column(s, *p_tangents):
            return torch.func.jvp(f_of, (z,) + self.params, (s,) + p_tangents)

        f, dS = torch.func.vmap(column)(S, *self.tangents)
        return torch.cat([f[0].reshape(-1), dS.reshape(-1)])


class _ForwardSensitivityFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, func, settings, stats, names, batched, y0, t, *params):
        shape, n = y0.shape, y0.numel()
        dtype, device = y0.dtype, y0.device
        need_z = ctx.needs_input_grad[5]
        if need_z and batched:
            d = shape[1]  # the same one-hot direction in every row: rows are independent
            S_z = torch.eye(d, dtype=dtype, device=device)[:, None, :].expand(d, *shape)
        elif need_z:
            S_z = torch.eye(n, dtype=dtype, device=device).view(n, *shape)
        else:
            S_z = torch.zeros(0, *shape, dtype=dtype, device=device)
        m_z = len(S_z)
        sizes = [p.numel() for p in params]
        m = m_z + sum(sizes)
        tangents, offset = [], m_z
        for p, size in zip(params, sizes):
            basis = torch.zeros(m, size, dtype=p.dtype, device=p.device)
            basis[offset + torch.arange(size), torch.arange(size)] = 1
            tangents.append(basis.view(m, *p.shape))
            offset += size
        field = SensitivityField(func, shape, [p.detach() for p in params], names, tangents)
        S0 = torch.cat([S_z, torch.zeros(m - m_z, *shape, dtype=dtype, device=device)])
        state0 = torch.cat([y0.detach().reshape(-1), S0.reshape(-1)])
        counter = StepCounter()
        try:
            with torch.no_grad():
                states = integrate(field, state0, t, settings, counter, error_numel=n, check_first=False)
        finally:
            counter.add_to(stats)
        S = states[:, n:].reshape(len(t), m, *shape)
        stats.sensitivity_directions = m
        stats.jvps_forward += counter.nfe * m
        stats.sensitivity_bytes += S.numel() * S.element_size()
        ctx.m_z, ctx.sizes, ctx.batched = m_z, sizes, batched
        ctx.param_meta = [(p.shape, p.dtype) for p in params]
        ctx.save_for_backward(S)
        return states[:, :n].reshape(len(t), *shape)

    @staticmethod
    def backward(ctx, grad_ys):
        if torch.is_grad_enabled():
            raise ValueError("gradient='forward' does not give higher-order gradients (create_graph=True was "
                             "asked for); use the default gradient='backprop'")
        (S,) = ctx.saved_tensors
        m_z, sizes = ctx.m_z, ctx.sizes
        # Σ_i ∂L/∂z(t_i) · S(t_i) for every direction, per row for a batch
        products = (grad_ys.unsqueeze(1) * S).sum(0)  # (m, *shape)
        grad_y0 = None
        if m_z:
            if ctx.batched:
                grad_y0 = products[:m_z].sum(-1).T  # direction k of row b: (batch, d)
            else:
                grad_y0 = products[:m_z].reshape(m_z, -1).sum(1).view(S.shape[2:])
        totals = products[m_z:].reshape(len(products) - m_z, -1).sum(1)
        grad_params = [g.view(shape).to(dtype)
                       for g, (shape, dtype) in zip(torch.split(totals, sizes), ctx.param_meta)]
        return (None, None, None, None, None, grad_y0, None, *grad_params)


class _SensitivityGuard(UntrackedGradientGuard):
    def message(self, leaf: torch.Tensor) -> str:
        return (f"func's output depends on a tensor (shape {tuple(leaf.shape)}, {leaf.dtype}) that requires "
                "grad but is not among gradient_params, so gradient='forward' would silently drop its "
                "gradient; make it an nn.Parameter of func (an nn.Module) and leave gradient_params at "
                "its default, or detach it")


def _gradient_params(func, gradient_params, y0) -> tuple:
    if gradient_params is None:
        params = tuple(func.parameters()) if isinstance(func, nn.Module) else ()
    else:
        if isinstance(gradient_params, torch.Tensor):
            raise TypeError("gradient_params must be a sequence of tensors (e.g. list(model.parameters())), "
                            "not one tensor")
        params = tuple(gradient_params)
        for i, p in enumerate(params):
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"gradient_params[{i}] must be a torch.Tensor, got {type(p).__name__}")
    params = tuple(p for p in params if p.requires_grad)
    if not params:
        return (), None
    if not isinstance(func, nn.Module):
        raise ValueError("gradient='forward' with gradient_params needs func to be an nn.Module whose "
                         "parameters they are (torch.func substitutes them by name); wrap func in an nn.Module")
    names = {id(p): name for name, p in func.named_parameters()}
    for i, p in enumerate(params):
        if id(p) not in names:
            raise ValueError(f"gradient_params[{i}] is not a parameter of func; with gradient='forward' every "
                             "gradient parameter must be registered in func (an nn.Module)")
        if p.device != y0.device:
            raise ValueError(f"a parameter of func is on {p.device} but y0 is on {y0.device}")
        if not p.dtype.is_floating_point:
            raise TypeError(f"parameters must be floating point to receive gradients, got {p.dtype}")
    return params, tuple(names[id(p)] for p in params)


def _check_rows_independent(func, y0, t0, counter) -> None:
    """With a 2-D ``y0``, one Jacobian–vector product with row 0 alone: other rows must not move."""
    tangent = torch.zeros_like(y0)
    tangent[0] = 1

    def f_of(z):
        return func(t0, z)

    with torch.no_grad():
        _, out = torch.func.jvp(f_of, (y0.detach(),), (tangent,))
    counter.nfe += 1
    if bool((out[1:] != 0).any()):
        raise ValueError(
            f"gradient='forward' treats a 2-D y0 (shape {tuple(y0.shape)}) as a batch of independent rows, "
            "but func mixes the rows (its output in other rows moves with row 0); flatten y0 to 1-D to "
            "treat it as one coupled state")


def forward_sensitivity_solve(func, y0, t, settings, stats, gradient, gradient_params, compiled, event_fn,
                              unflatten) -> torch.Tensor:
    """``odeint``'s solve with ``gradient="forward"``: the state and its sensitivities together.

    **Arguments:** the checked ``func``, ``y0`` (flattened if it was a tuple) and ``t``; the
    solver ``settings``; the ``stats`` to fill in (``stats.sensitivity_directions`` = d + p,
    ``stats.jvps_forward``: evaluations of the sensitivity field times the directions,
    ``stats.sensitivity_bytes``: the stored S); ``gradient`` and ``gradient_params`` as the
    user gave them; ``compiled``, ``event_fn`` and ``unflatten`` (``None`` unless ``y0`` was a
    tuple), to refuse what is not supported.

    **Returns:** the states at the times ``t``, with gradients to ``y0``, ``t`` and the
    gradient parameters.

    Introduced in the chapter "Choosing a gradient method, by measurement".
    """
    if not isinstance(gradient, str) or gradient not in GRADIENTS:
        raise ValueError(f"gradient must be one of {list(GRADIENTS)}, got {gradient!r}")
    if gradient == "backprop":
        raise ValueError("gradient_params is only for gradient='forward' (backprop differentiates "
                         "every tensor func uses); leave it out")
    what = "gradient='forward' cannot be combined with "
    if unflatten is not None:
        raise ValueError(what + "a tuple y0 (yet); concatenate the members into one tensor")
    if event_fn is not None:
        raise ValueError(what + "event_fn; use gradient='backprop' or odeint_adjoint")
    if resolve_compile(compiled) is not None:
        raise ValueError(what + "compiled=True (yet); use compiled=False")
    if settings.per_sample_steps:
        raise ValueError(what + "options['per_sample_steps']")
    if y0.dim() > 2:
        raise ValueError(f"gradient='forward' takes y0 of shape (d,) or (batch, d), got shape "
                         f"{tuple(y0.shape)}; reshape it")
    owner = getattr(func, "base", func)
    callbacks = [name for name in CALLBACKS if callable(getattr(owner, name, None))]
    if callbacks:
        raise ValueError(what + f"func's step callbacks {callbacks} (the solve steps the state with its "
                         "sensitivities)")
    params, names = _gradient_params(func, gradient_params, y0)
    if len(t) == 1:
        return one_time_solution(y0, t)
    grad_on = torch.is_grad_enabled()
    counter = StepCounter()
    try:
        if grad_on:
            known = params + (tuple(func.parameters()) if isinstance(func, nn.Module) else ())
            f0 = _SensitivityGuard(func, known).watch(func)(t[0].detach(), y0.detach())
        else:
            with torch.no_grad():
                f0 = func(t[0].detach(), y0.detach())
        counter.nfe += 1
        _check_output(f0, y0, t[0])
        needed = grad_on and (y0.requires_grad or t.requires_grad or bool(params))
        if not needed:
            return integrate(func, y0, t, settings, counter)
        batched = y0.dim() == 2
        if batched and len(y0) > 1:
            _check_rows_independent(func, y0, t[0].detach(), counter)
        attach = None
        if t.requires_grad:
            y0, t, attach = times_by_boundary_form(func, y0, t, counter)
        ys = _ForwardSensitivityFunction.apply(func, settings, stats, names, batched, y0, t.detach(), *params)
        return ys if attach is None else attach(ys)
    finally:
        counter.add_to(stats)
