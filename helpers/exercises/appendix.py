"""Self-checking exercises of the appendix "Measured performance".

- ``app-ex-kept``: ``kept_per_step(B, widths, method)`` returns ``(backprop, adjoint)``, the
  numbers that the autograd graph keeps for the backward pass per extra fixed step of
  ``method`` for a tanh MLP with layer widths ``widths`` and a batch of ``B`` states, with
  backpropagation through :func:`helpers.odeint` and with :func:`helpers.odeint_adjoint`;
  checked against the slopes measured with :func:`helpers.memory.graph_memory`;
- ``app-q-seminorm``: multiple choice, why the seminorm lowers the number of evaluations of f
  in the adjoint's backward solve.
"""
from __future__ import annotations

import torch

from ..adjoint import odeint_adjoint
from ..odeint import odeint
from ._core import call, choice, compare, exercise, unpack
from .ch02 import measured_bytes_per_step

# widths, batch, method, dtype: problem S first, then cases that change one thing each
KEPT_CASES = (
    ((2, 64, 2), 256, "rk4", torch.float32),
    ((3, 8, 3), 5, "midpoint", torch.float64),
    ((2, 12, 5, 2), 7, "heun3", torch.float32),
)


def _measured_numbers_per_step(solve, widths, B, method, dtype) -> torch.Tensor:
    """The slope, in numbers, of the graph memory of ``solve`` between 2 and 4 steps."""
    size = torch.empty((), dtype=dtype).element_size()
    return measured_bytes_per_step(widths, B, method, dtype, solve=solve) / size


@exercise(
    "app-ex-kept",
    "The numbers kept per step by backpropagation and by the adjoint",
    hints=(
        "Backpropagation keeps something from every evaluation of f; the adjoint keeps "
        "only what its backward solve cannot rebuild, the states at the requested times.",
        "Per evaluation, each Linear layer saves its input, B rows of its input width (a "
        "tanh's output is the next layer's input: one storage). The evaluations per step "
        "are METHODS[method].stages from helpers.tableaus.",
        "Backprop: stages × B × (sum of every width except the last). The adjoint's count "
        "does not change with the number of steps.",
    ),
    success="Both counts match the slopes measured with helpers.memory.graph_memory.",
)
def _kept(answer):
    worst = 0.0
    for n, (widths, B, method, dtype) in enumerate(KEPT_CASES):
        kind = str(dtype).replace("torch.", "")
        where = f"case {n + 1} (MLP{widths}, B = {B}, {method}, {kind})"
        want_bp = _measured_numbers_per_step(odeint, widths, B, method, dtype)
        want_adj = _measured_numbers_per_step(odeint_adjoint, widths, B, method, dtype)
        out = call(answer, B, widths, method, where=where)
        got_bp, got_adj = unpack("the result (backprop, adjoint)", out, 2, where)
        worst = max(worst, compare(
            "backprop numbers per step", got_bp, want_bp, where=where, tol=1e-12,
            look_at="numbers, not bytes: the input of every Linear layer in every "
                    "evaluation of the step."))
        worst = max(worst, compare(
            "adjoint numbers per step", got_adj, want_adj, where=where, tol=1e-12,
            look_at="what odeint_adjoint saves for its backward solve, and whether that "
                    "depends on the steps taken between the requested times."))
    return worst


choice(
    "app-q-seminorm",
    "Why the seminorm lowers the backward solve's evaluations of f",
    options={
        "a": "each evaluation of f is cheaper with the seminorm",
        "b": "the parameter-gradient channel no longer takes part in accepting or "
             "rejecting a step, so z and λ alone set the step size",
        "c": "the backward solve skips the vector–Jacobian product for the parameters",
        "d": "the seminorm loosens the tolerance on every channel",
    },
    right="6aa02fee2c8eb83f",
    wrong_notes={
        "a": "the count of evaluations changes, not the cost of one: what decides how many "
             "steps are taken?",
        "c": "the parameter gradient is still integrated at every stage; it still needs "
             "its product.",
        "d": "z and λ are held to the same rtol and atol with either norm.",
    },
    hints=(
        "NFE is set by the number of steps, accepted and rejected, not by one step's cost.",
        "An adaptive solver accepts a step when the norm of its error estimate is small "
        "enough. Which channels does that norm measure?",
        "The parameter gradient is an integral of the other channels: nothing downstream "
        "reads it during the solve, so its error need not shorten the steps.",
    ),
    success="With the seminorm only z and λ decide the steps; the parameter channel's "
            "error no longer forces shorter or rejected ones.",
)
