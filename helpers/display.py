"""Showing library code in the book: syntax-highlighted, without its docstring, within the column.

The chapters show the code of ``helpers`` rather than retype it. ``show_source(obj)`` returns an
:class:`IPython.display.Code` object, which renders highlighted in the built book, in Jupyter
and in Colab. The docstring is left out (the chapter's prose says what the code does) and
lines longer than the book's code column are wrapped at a space, continuation lines indented
under their start, so no line is cut off at the right edge.

Introduced in the chapter "Neural ODEs and the forward pass".
"""
from __future__ import annotations

import ast
import inspect
import textwrap
from typing import Any

# characters of the book's code font that fit its text column at a 1280-px window
COLUMN = 68


def source_without_docstring(obj: Any) -> str:
    """The source of ``obj`` (a function, method or class), dedented, with docstrings removed.

    **Arguments:**

    - `obj`: anything :func:`inspect.getsource` accepts.

    **Returns:** the source text; the docstring of ``obj`` and, for a class, of each of its
    methods is dropped, everything else (comments included) is kept line for line.

    Used in the chapter "Neural ODEs and the forward pass".
    """
    source = textwrap.dedent(inspect.getsource(obj))
    lines = source.splitlines()
    drop = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                drop.update(range(first.lineno - 1, first.end_lineno))
    kept = [line for i, line in enumerate(lines) if i not in drop]
    return "\n".join(kept).rstrip() + "\n"


def wrap_line(line: str, width: int = COLUMN) -> list:
    """Split one source line into lines of at most ``width`` characters where it can.

    Breaks fall at spaces; a code line continues four spaces past its own indentation and a
    comment continues as a comment, so the shown code reads as the original (Python would
    need brackets to accept some of the breaks; the text is for reading, not for pasting).

    **Arguments:**

    - `line`: one line of source.
    - `width`: the longest line wanted.

    **Returns:** a list of lines; a single word longer than ``width`` is left whole.

    Used in the chapter "Neural ODEs and the forward pass".
    """
    if len(line) <= width:
        return [line]
    indent = len(line) - len(line.lstrip())
    # a wrapped comment stays a comment; wrapped code is indented under its start
    more = "# " if line.lstrip().startswith("#") else "    "
    wrapper = textwrap.TextWrapper(
        width=width, initial_indent=line[:indent], subsequent_indent=" " * indent + more,
        break_long_words=False, break_on_hyphens=False, drop_whitespace=True,
    )
    return wrapper.wrap(line.strip()) or [line]


def show_source(obj: Any, width: int = COLUMN):
    """Display the code of ``obj`` as the book shows library code.

    **Arguments:**

    - `obj`: a function, method or class of ``helpers`` (or anything with source).
    - `width`: the longest line shown; longer lines are wrapped (see :func:`wrap_line`).

    **Returns:** an :class:`IPython.display.Code` (Python highlighting) that a notebook
    displays as the cell's result.

    Introduced in the chapter "Neural ODEs and the forward pass".
    """
    from IPython.display import Code  # only where a notebook shows it; helpers does not need IPython

    lines = []
    for line in source_without_docstring(obj).splitlines():
        lines.extend(wrap_line(line, width))
    return Code("\n".join(lines), language="python")
