"""Self-checking exercises of the chapter "When the adjoint fails": which gradient is exact.

The chapter's cells are still to be written; the checker and its test are ready:
``ch10-q-exact``, multiple choice.
"""
from __future__ import annotations

from ._core import choice

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
