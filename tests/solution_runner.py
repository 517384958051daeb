"""Run a chapter's main text once, then each exercise solution on its own after it.

A reader opens one solution, not all of them: each solution must run after the chapter's main
text without the code of the other solutions. The main text is every code cell that is not
between a ``{solution-start}`` and its ``{solution-end}``; it runs once, in one namespace, in the
stored order. Each solution then runs in a shallow copy of that namespace, so a name that only
an earlier solution defined is a ``NameError`` here, as it would be for the reader.

Used by ``tests/test_solutions.py``; also a script:
``python tests/solution_runner.py book/05_vjp.ipynb`` prints each solution's result.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import re
import sys
import traceback

ROOT = pathlib.Path(__file__).resolve().parent.parent


def split_cells(path):
    """Return ``(main_cells, solutions)``: the main text's code sources and ``{label: [sources]}``."""
    return split_notebook(json.loads(pathlib.Path(path).read_text()))


def split_notebook(nb):
    """:func:`split_cells` for a notebook already loaded as a dict."""
    main, solutions, current = [], {}, None
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            start = re.search(r"```\{solution-start\}\s+(\S+)", source)
            if start:
                current = start.group(1)
                solutions.setdefault(current, [])
            if "{solution-end}" in source:
                current = None
            continue
        if cell["cell_type"] != "code":
            continue
        (solutions[current] if current else main).append(source)
    return main, solutions


def _run(sources, namespace, name):
    for i, source in enumerate(sources):
        code = compile(source, f"<{name} cell {i}>", "exec")
        exec(code, namespace)


def run_solutions(path, only=None):
    """Run the main text, then each solution alone; return ``{label: None or error text}``."""
    import matplotlib

    matplotlib.use("Agg")
    path = pathlib.Path(path)
    main, solutions = split_cells(path)
    cwd = os.getcwd()
    os.chdir(path.parent)  # notebooks run beside themselves (the setup cell adds "..")
    results = {}
    try:
        namespace = {"__name__": "__main__"}
        with contextlib.redirect_stdout(io.StringIO()):
            _run(main, namespace, f"{path.name} main text")
        for label, sources in solutions.items():
            if only is not None and label not in only:
                continue
            if not sources:
                results[label] = None
                continue
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    _run(sources, dict(namespace), label)
                results[label] = None
            except Exception:
                results[label] = traceback.format_exc(limit=3)
            finally:
                import matplotlib.pyplot as plt

                plt.close("all")
    finally:
        os.chdir(cwd)
    return results


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        for label, error in run_solutions(arg).items():
            print(f"{arg} {label}: {'ok' if error is None else 'FAILED'}")
            if error:
                print(error)
