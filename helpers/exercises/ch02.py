"""Self-checking exercises of the chapter "The problem": a conceptual question on memory.

The chapter's cells are still to be written; the checker and its test are ready:
``ch2-q-memory``, multiple choice.
"""
from __future__ import annotations

from ._core import choice

choice(
    "ch2-q-memory",
    "How the memory of backpropagation through the solver grows with the steps",
    options={
        "a": "it does not grow: a constant, whatever the number of steps N",
        "b": "in proportion to N",
        "c": "in proportion to N²",
        "d": "in proportion to log N",
    },
    right="97aa5156552b3e47",
    wrong_notes={
        "a": "that is the adjoint method's promise, not backpropagation's: what does autograd "
             "keep from each step for the backward pass?",
        "c": "each step's saved values are needed once; nothing pairs every step with every "
             "other.",
        "d": "checkpointing schemes can trade time for memory, but plain backpropagation "
             "keeps every step's values.",
    },
    hints=(
        "Reverse mode needs the intermediate values of the forward pass.",
        "Every solver step adds its stages to the graph, and none is freed before the "
        "backward pass.",
        "Each step costs the same amount of memory, so count the steps.",
    ),
    success="Every step keeps its intermediate values for the backward pass.",
)
