"""Self-checking exercises of the chapter "When the adjoint goes wrong": which gradient is
exact, and the reader's discrete adjoint of explicit Euler.

- ``ch10-q-exact``: multiple choice;
- ``ch10-ex-my-euler``: ``my_euler(func, z0, t0, t1, loss_fn, steps)`` returns
  ``(dL_dz0, dL_dtheta)`` for the loss computed by ``steps`` explicit Euler steps, by a
  hand-written discrete adjoint, checked against backpropagation through
  ``helpers.odeint(..., method="euler")``.
"""
from __future__ import annotations

import torch

from ..odeint import odeint
from ._core import call, choice, compare, exercise, unpack
from .reference import small_field


@exercise(
    "ch10-ex-my-euler",
    "Your discrete adjoint of explicit Euler",
    hints=(
        "Store z_0, ..., z_N in a forward loop of z_(n+1) = z_n + h f(t_n, z_n); the loss "
        "is a function of z_N alone.",
        "Differentiate one step: λ_n = λ_(n+1) (I + h ∂f/∂z) and the parameters receive "
        "h λ_(n+1) ∂f/∂θ, one VJP per step with grad_outputs = h λ_(n+1).",
        "Every Jacobian is taken where the forward step took its slope: at (t_n, z_n), not "
        "at (t_(n+1), z_(n+1)), which would be the continuous adjoint.",
    ),
    success="dL/dz0 and dL/dθ agree with backpropagation through the Euler steps.",
)
def _my_euler(answer):
    worst = 0.0
    for seed in range(2):
        func, z0, t0, t1, loss_fn, where = small_field(20 + seed)
        steps = 10 + 5 * seed
        where = (f"case {seed + 1}" + where[where.index(" ("):]).replace(
            "20 steps", f"{steps} Euler steps")
        params = [p for p in func.parameters() if p.requires_grad]
        zz = z0.clone().requires_grad_(True)
        times = torch.tensor([t0, t1], dtype=torch.float64)
        z1 = odeint(func, zz, times, method="euler",
                    options=dict(step_size=(t1 - t0) / steps))[-1]
        want_z0, *want_theta = torch.autograd.grad(loss_fn(z1), [zz, *params])
        out = call(answer, func, z0.clone(), t0, t1, loss_fn, steps, where=where)
        got_z0, got_theta = unpack("the result (dL/dz0, dL/dθ)", out, 2, where)
        got_theta = unpack("dL/dθ, one tensor per parameter", got_theta, len(params), where)
        worst = max(worst, compare(
            "dL/dz0", got_z0, want_z0, where=where, tol=1e-9, vector=True,
            look_at="each step multiplies λ by (I + h ∂f/∂z) from the right, with the "
                    "Jacobian at the step's start."))
        for k, (got, want) in enumerate(zip(got_theta, want_theta)):
            worst = max(worst, compare(
                f"dL/dθ (parameter {k})", got, want, where=where, tol=1e-9,
                look_at="sum h λ_(n+1) ∂f/∂θ at (t_n, z_n) over the steps, shaped like "
                        "the parameter."))
    return worst

choice(
    "ch10-q-exact",
    "Which gradient is exact for the loss computed by a fixed-step RK solve",
    options={
        "a": "the continuous adjoint, solved backward with the same fixed steps",
        "b": "backpropagation through the solver's steps (the discrete adjoint)",
        "c": "both: with the same steps they agree to rounding",
        "d": "neither: both carry the truncation error of the method",
    },
    right="95c8c47755dbb0f0",
    wrong_notes={
        "a": "the continuous adjoint discretizes the exact gradient's equation; that "
             "differs from differentiating the discrete computation.",
        "c": "they agree as the step shrinks, but at a fixed step they differ by the "
             "method's truncation error.",
        "d": "one of them differentiates exactly the arithmetic that produced the loss.",
    },
    hints=(
        "Ask what the loss actually is: a function of the RK steps that were taken.",
        "Which method differentiates those steps, operation by operation?",
        "Optimize-then-discretize and discretize-then-optimize differ at a fixed step.",
    ),
    success="Backpropagation differentiates the computed loss exactly; the continuous "
            "adjoint only to the method's order.",
)
