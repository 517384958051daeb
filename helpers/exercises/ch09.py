"""Self-checking exercises of the chapter on time gradients: the last step of the reader's own
adjoint, and the sign of dL/dt0.

Both are exercises of the chapter:

- ``ch9-ex-my-dldt0``: ``my_dLdt(func, z0, t0, t1, loss_fn, steps)`` returns
  ``(dL_dt0, dL_dt1)``, the gradients with respect to the two ends of the solve, from the
  reader's fixed-step adjoint (``steps`` RK4 steps);
- ``ch9-q-sign``: a multiple-choice question on the formula for dL/dt0.
"""
from __future__ import annotations

from ._core import call, choice, compare, exercise, unpack
from .reference import STEPS, adjoint_grads, small_field


@exercise(
    "ch9-ex-my-dldt0",
    "Your dL/dt0 and dL/dt1",
    hints=(
        "Moving t1 later lets the state run a little longer along f: dL/dt1 = ∂L/∂z(t1) "
        "f(t1, z(t1)).",
        "Moving t0 later starts the same initial state later, which is like running less: "
        "the sign is the opposite one, and the adjoint at t0 takes the place of ∂L/∂z(t1).",
        "dL/dt0 = -λ(t0) f(t0, z0), with λ(t0) from your backward solve; both are sums of "
        "an elementwise product (a row times a column).",
    ),
    success="dL/dt0 and dL/dt1 agree with helpers.odeint_adjoint on the same RK4 steps.",
)
def _my_dldt0(answer):
    worst = 0.0
    for seed in range(2):
        func, z0, t0, t1, loss_fn, where = small_field(seed)
        _, _, dt0, dt1 = adjoint_grads(func, z0, t0, t1, loss_fn)
        out = call(answer, func, z0.clone(), t0, t1, loss_fn, STEPS, where=where)
        got_t0, got_t1 = unpack("the result (dL/dt0, dL/dt1)", out, 2, where)
        worst = max(worst, compare(
            "dL/dt0", got_t0, dt0, where=where, tol=1e-7,
            look_at="λ at t0 (not t1) times f at t0, and the sign."))
        worst = max(worst, compare(
            "dL/dt1", got_t1, dt1, where=where, tol=1e-7,
            look_at="∂L/∂z(t1) times f(t1, z(t1))."))
    return worst


choice(
    "ch9-q-sign",
    "The formula for dL/dt0",
    options={
        "a": "+λ(t0) f(t0, z(t0))",
        "b": "-λ(t0) f(t0, z(t0))",
        "c": "-λ(t1) f(t1, z(t1))",
        "d": "0, because t0 is not a parameter of f",
    },
    right="f6559b366c84f1cb",
    wrong_notes={
        "a": "start the same z0 a little later: does the solve then run longer or shorter?",
        "c": "the start time acts on the solve at t0; the adjoint carries ∂L/∂z back there.",
        "d": "L depends on t0 through the solution even when f ignores t.",
    },
    hints=(
        "Compare with dL/dt1 = ∂L/∂z(t1) f(t1, z(t1)).",
        "Shifting t0 later with z(t0) fixed shortens the solve.",
        "λ(t0) = dL/dz(t0) is what carries the loss back to the start.",
    ),
    success="Starting later is like running less, so the sign is negative.",
)
