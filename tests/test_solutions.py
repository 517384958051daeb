"""Each exercise solution runs on its own after its chapter's main text (see solution_runner)."""
from __future__ import annotations

import pathlib
import re
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from solution_runner import ROOT, run_solutions, split_cells  # noqa: E402

CHAPTERS = sorted(p for p in (ROOT / "book").glob("*.ipynb") if re.match(r"(\d\d_|appendix)", p.name))


def test_chapters_have_solutions_with_code():
    counts = {p.name: sum(1 for s in split_cells(p)[1].values() if s) for p in CHAPTERS}
    assert sum(counts.values()) >= 10, counts


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_each_solution_runs_alone_after_the_main_text(path):
    failures = {label: err for label, err in run_solutions(path).items() if err is not None}
    assert not failures, "\n\n".join(f"{label}:\n{err}" for label, err in failures.items())
