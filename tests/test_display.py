"""helpers.display: library code shown without docstrings and within the book's code column."""
from __future__ import annotations

import ast

import helpers
from helpers import display
from helpers.runge_kutta import rk_step


def test_docstrings_are_removed_and_code_kept():
    source = display.source_without_docstring(helpers.AugmentedDynamics)
    assert "**Arguments:**" not in source and "vector–Jacobian product" not in source.split("def")[0]
    assert "def __call__" in source and "torch.autograd.grad" in source
    ast.parse(source)  # what is left is still Python


def test_shown_lines_fit_the_column():
    code = display.show_source(rk_step)
    lines = code.data.splitlines()
    assert lines and max(len(line) for line in lines) <= display.COLUMN
    assert "def rk_step" in code.data


def test_a_wrapped_comment_stays_a_comment():
    line = "    # " + "word " * 30
    wrapped = display.wrap_line(line, 40)
    assert len(wrapped) > 1 and all(w.lstrip().startswith("#") for w in wrapped)
    assert all(len(w) <= 40 for w in wrapped)
    assert " ".join(w.strip().lstrip("# ") for w in wrapped).split() == line.split()[1:]


def test_wrapped_code_keeps_every_word_in_order():
    line = "        return some_function(alpha, beta, gamma, delta, epsilon, zeta, eta, theta, iota)"
    wrapped = display.wrap_line(line, 50)
    assert len(wrapped) == 3 and all(w.startswith(" " * 12) for w in wrapped[1:])
    assert all(len(w) <= 50 for w in wrapped)
    assert " ".join(w.strip() for w in wrapped) == line.strip()
