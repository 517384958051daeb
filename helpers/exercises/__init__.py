"""Self-checking exercises: the reader's answer checked against the mathematics.

Usage in a chapter (or in Colab, from the pip-installed package)::

    from helpers import exercises as ex

    def closed_form(theta, z0, t0, t1):
        ...                                 # the reader's answer
    ex.check("ch4-ex-closed-form", closed_form)
    ex.hint("ch4-ex-closed-form", 1)       # graded hints, 1 to 3

:func:`check` runs the reader's function (or value) on seeded random inputs and compares it with
an answer computed independently, by autograd through the solver, by finite differences, with
Jacobians built by ``torch.func`` or from a closed form; no expected number is stored. It prints
a message and returns a :class:`CheckResult` whose ``status`` is ``"not attempted"`` (the
starter's ``...``, ``None`` or a function raising ``NotImplementedError``: the book, executed as
stored, passes), ``"wrong"`` (the message names the first quantity that disagrees, by how much,
at which input, and what to look at, never the right value) or ``"right"`` (with the largest
relative error). Conceptual questions are multiple choice, ``ex.check("ch9-q-sign", "b")``,
answered offline; their answers are stored as digests, not in clear.

**Adding exercises to a chapter.** Write (or extend) ``chNN.py`` in this package:

- a function exercise: decorate ``run(answer) -> largest error`` with
  ``@exercise(label, title, hints=(h1, h2, h3), success=...)``; inside, build seeded inputs,
  compute the reference independently, get the reader's output with ``call(answer, *args,
  where=...)`` (it turns ``NotImplementedError`` into "not attempted" and any other exception
  into a wrong answer), split tuples with ``unpack`` and compare each quantity, in the order
  a reader would compute them, with ``compare(name, got, expected, where=..., tol=...,
  look_at=...)``, which raises :class:`Wrong` with the relative error and never the values;
- a conceptual question: ``choice(label, title, options, right=digest(label, letter),
  wrong_notes, hints)``;
- import the module below (the appendix's is ``appendix.py``, labels ``app-...``), add the label's exercise to the chapter (an exercise block with
  the same ``:label:``, a starter cell, a cell ``ex.check(label, answer)``, and in the dropdown
  solution ``assert ex.check(label, reference).status == "right"``), add the chapter to
  ``SELF_CHECKING`` in ``tests/test_book.py``, and add a reference and a planted wrong answer
  to ``tests/test_exercises.py``.

The reader's own adjoint runs through chapters 5 (``ch5-ex-my-vjp``), 6 (``ch6-ex-my-dynamics``,
``ch6-ex-my-adjoint``) and 9 (``ch9-ex-my-dldt0``), each checked against
:func:`helpers.odeint_adjoint` (see ``reference.py``).

Introduced in the chapter "Neural ODEs and the forward pass" (chapter 1); used from chapter 1 on.
"""
from __future__ import annotations

from . import appendix, ch01, ch02, ch03, ch04, ch05, ch06, ch07, ch08, ch09, ch10, ch11, ch12, ch13  # noqa: F401  (each registers its exercises)
from ._core import REGISTRY, STATUSES, CheckResult, run_check, wrap

__all__ = ["check", "hint", "labels", "CheckResult", "STATUSES"]


def check(label: str, answer) -> CheckResult:
    """Check the reader's answer to the exercise ``label`` and print what was found.

    **Arguments:**

    - `label`: the exercise's label in the book, e.g. ``"ch4-ex-closed-form"``.
    - `answer`: the reader's function (called on seeded random inputs) or, for a
      multiple-choice question, the letter of an option. ``...``, ``None`` or a function that
      raises ``NotImplementedError`` count as not attempted.

    **Returns:** a :class:`CheckResult` ``(label, status, message, error)`` with ``status`` in
    ``"not attempted"``, ``"wrong"``, ``"right"``; the message is also printed.

    **Raises:** ``TypeError`` for a label that is not a string; ``ValueError`` for a label that
    names no self-checking exercise.

    Introduced in the chapter "Neural ODEs and the forward pass".
    """
    return run_check(label, answer)


def hint(label: str, n: int = 1) -> str:
    """Print and return the ``n``-th hint (1, 2 or 3; each says more) for exercise ``label``.

    **Arguments:**

    - `label`: the exercise's label.
    - `n`: which hint, 1 to 3.

    **Returns:** the hint's text.

    **Raises:** ``ValueError`` for an unknown label or an ``n`` outside 1..3; ``TypeError`` for
    an ``n`` that is not an integer.

    Introduced in the chapter "Neural ODEs and the forward pass".
    """
    from ._core import lookup

    ex = lookup(label) if isinstance(label, str) else None
    if ex is None:
        raise TypeError(f"label must be a string naming an exercise, got {type(label).__name__}")
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"n must be an integer 1, 2 or 3, got {type(n).__name__}")
    if not 1 <= n <= len(ex.hints):
        raise ValueError(f"n must be 1, 2 or 3, got {n}")
    text = wrap(f"{label}, hint {n} of {len(ex.hints)}: {ex.hints[n - 1]}")
    print(text)
    return text


def labels() -> list:
    """The labels of every self-checking exercise, sorted.

    **Returns:** a list of strings.

    Introduced in the chapter "Neural ODEs and the forward pass".
    """
    return sorted(REGISTRY)
