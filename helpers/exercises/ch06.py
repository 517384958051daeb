"""Self-checking exercises of the chapter "The adjoint algorithm": steps 2 and 3 of the
reader's own adjoint (their augmented dynamics, their fixed-step backward solve).

Both are exercises of the chapter, each with a starter cell, a check cell and a checked solution:

- ``ch6-ex-my-dynamics``: ``my_augmented(func, t, z, lam)`` returns ``(dz, dlam, dtheta)``,
  the right-hand side ``[f, -λ ∂f/∂z, -λ ∂f/∂θ]`` of the backward solve, ``dtheta`` one tensor
  per parameter (the reader may call their ``my_vjp`` of chapter 5 inside it);
- ``ch6-ex-my-adjoint``: ``my_adjoint(func, z0, t0, t1, loss_fn, steps)`` returns
  ``(dL_dz0, dL_dtheta)`` from ``steps`` classical RK4 steps forward, then backward.
"""
from __future__ import annotations

import torch

from ..adjoint import AugmentedDynamics
from ._core import call, compare, exercise, unpack
from .ch05 import _vjp_cases
from .reference import STEPS, adjoint_grads, adjoint_reference, small_field


@exercise(
    "ch6-ex-my-dynamics",
    "Your augmented dynamics: the right-hand side of the backward solve",
    hints=(
        "Three blocks: the state moves with f, the adjoint with -λ ∂f/∂z, the parameter "
        "gradient with -λ ∂f/∂θ.",
        "Both products come from one VJP (your my_vjp of chapter 5); mind the minus signs.",
        "Return (func(t, z) detached, -vz, tuple(-v for v in vtheta)).",
    ),
    success="Your dynamics match helpers.AugmentedDynamics, and an RK4 adjoint built on them "
            "matches helpers.odeint_adjoint.",
)
def _my_dynamics(answer):
    worst = 0.0
    for func, t, z, lam, where in _vjp_cases():
        params = [p for p in func.parameters() if p.requires_grad]
        aug = AugmentedDynamics(func, z.shape, params)
        state = torch.cat([z.reshape(-1), lam.reshape(-1),
                           torch.zeros(sum(p.numel() for p in params), dtype=z.dtype)])
        want_z, want_lam, want_a = aug.split(aug(t, state))
        out = call(answer, func, t.clone(), z.clone(), lam.clone(), where=where)
        got_z, got_lam, got_theta = unpack("the result (dz, dλ, dθ)", out, 3, where)
        got_theta = unpack("dθ, one tensor per parameter", got_theta, len(params), where)
        worst = max(worst, compare("dz/dt", got_z, want_z, where=where, tol=1e-12,
                                   look_at="the state moves with f(t, z) itself."))
        worst = max(worst, compare("dλ/dt", got_lam, want_lam, where=where, tol=1e-10,
                                   look_at="the adjoint equation: λ̇ = -λ ∂f/∂z."))
        offset = 0
        for k, (got, p) in enumerate(zip(got_theta, params)):
            want = want_a[offset:offset + p.numel()].view(p.shape)
            offset += p.numel()
            worst = max(worst, compare(
                f"da_θ/dt for parameter {k}", got, want, where=where, tol=1e-10,
                look_at="ȧ_θ = -λ ∂f/∂θ, shaped like the parameter."))

    def dynamics(func):
        def rhs(t, z, lam):
            return tuple(answer(func, t, z, lam))
        return rhs

    return max(worst, adjoint_reference(
        dynamics, "an RK4 adjoint on your dynamics",
        "the dynamics passed the pointwise checks; look at how they treat z and λ that "
        "come without a graph."))


@exercise(
    "ch6-ex-my-adjoint",
    "Your fixed-step adjoint: dL/dz0 and dL/dθ from RK4 steps back",
    hints=(
        "Forward: steps RK4 steps of size h = (t1 - t0) / steps from z0, without a graph. "
        "Then λ(t1) = ∂L/∂z(t1) by autograd on loss_fn.",
        "Backward: the same number of RK4 steps of size -h on [z, λ, a_θ], starting from "
        "[z(t1), λ(t1), 0] at t1, with your augmented dynamics as right-hand side.",
        "At t0, λ is dL/dz0 and a_θ is dL/dθ (one tensor per parameter). Each RK4 stage "
        "evaluates the dynamics at t + h/2 or t + h, with h negative going back.",
    ),
    success="dL/dz0 and dL/dθ agree with helpers.odeint_adjoint on the same RK4 steps.",
)
def _my_adjoint(answer):
    worst = 0.0
    for seed in range(2):
        func, z0, t0, t1, loss_fn, where = small_field(seed)
        dz0, dtheta, _, _ = adjoint_grads(func, z0, t0, t1, loss_fn)
        out = call(answer, func, z0.clone(), t0, t1, loss_fn, STEPS, where=where)
        got_z0, got_theta = unpack("the result (dL/dz0, dL/dθ)", out, 2, where)
        got_theta = unpack("dL/dθ, one tensor per parameter", got_theta, len(dtheta), where)
        worst = max(worst, compare(
            "dL/dz0 = λ(t0)", got_z0, dz0, where=where, tol=1e-7,
            look_at="λ starts at ∂L/∂z(t1) and runs backward with -λ ∂f/∂z; "
                    "is every step taken, with h negative?"))
        for k, (got, want) in enumerate(zip(got_theta, dtheta)):
            worst = max(worst, compare(
                f"dL/dθ for parameter {k}", got, want, where=where, tol=1e-7,
                look_at="a_θ starts at zero at t1 and integrates -λ ∂f/∂θ backward."))
    return worst
