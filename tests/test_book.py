"""The book's sources: notebooks stored clean, the setup cell, the table of contents, the chapter standard."""
from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
import types

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import tidy_notebooks  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from solution_runner import split_notebook  # noqa: E402

NOTEBOOKS = tidy_notebooks.notebooks()
CHAPTERS = [p for p in NOTEBOOKS if re.match(r"\d\d_", p.name)]


def load(path):
    return json.loads(path.read_text())


def markdown(nb):
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")


def test_there_are_chapters():
    assert len(CHAPTERS) >= 5


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_without_outputs(path):
    nb = load(path)
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and (c["outputs"] or c["execution_count"])]
    assert not dirty, f"{path.name}: cells {dirty} have stored outputs; run scripts/tidy_notebooks.py"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_kernelspec_is_python3(path):
    assert load(path)["metadata"]["kernelspec"]["name"] == "python3"


def test_tidy_check_passes():
    """Every notebook already has the setup cell for the URL in _config.yml, no outputs, the kernelspec."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "tidy_notebooks.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_setup_cell_names_the_configured_repository(path):
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"].rstrip("/")
    first = load(path)["cells"][0]
    source = "".join(first["source"])
    assert source.startswith(tidy_notebooks.MARKER)
    assert "remove-cell" in first["metadata"].get("tags", [])
    assert re.findall(r'REPOSITORY = "([^"]+)"', source) == [url]


def run_setup_cell(monkeypatch, in_colab: bool):
    """Execute the setup cell as a notebook would, recording any command it runs."""
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append((cmd, kw)))
    if in_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    url = tidy_notebooks.repository_url()
    exec(compile(tidy_notebooks.setup_source(url), "setup-cell", "exec"), {})
    return url, calls


def test_setup_cell_installs_helpers_in_colab(monkeypatch):
    url, calls = run_setup_cell(monkeypatch, in_colab=True)
    assert len(calls) == 1
    cmd, kwargs = calls[0]
    assert cmd == [sys.executable, "-m", "pip", "install", "-q", f"git+{url}"]
    assert kwargs.get("check") is True


def test_setup_cell_does_nothing_elsewhere(monkeypatch):
    _, calls = run_setup_cell(monkeypatch, in_colab=False)
    assert calls == []


def test_toc_lists_every_page_and_only_existing_ones():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]
    for f in files:
        assert any((ROOT / f"{f}{ext}").exists() for ext in (".md", ".ipynb")), f"{f} is in _toc.yml but missing"
    pages = {str(p.relative_to(ROOT).with_suffix("")) for p in (ROOT / "book").glob("*") if p.suffix in (".md", ".ipynb")}
    assert pages <= set(files), f"pages not in _toc.yml: {sorted(pages - set(files))}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_standard(path):
    """Objectives first, a summary, at least three exercises each with a collapsed solution, asserts."""
    nb = load(path)
    text = markdown(nb)
    assert re.search(r"(?i)what you will learn|in this chapter you will", text), "no learning objectives"
    assert re.search(r"(?im)^#+ .*summary", text), "no summary section"
    exercises = re.findall(r"```\{exercise-start\}\s*\n:label: (\S+)", text)
    assert len(exercises) >= 3, f"only {len(exercises)} exercises"
    solutions = re.findall(r"```\{solution-start\} (\S+)\s*\n:class: dropdown", text)
    assert set(exercises) <= set(solutions), f"exercises without a dropdown solution: {set(exercises) - set(solutions)}"
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert code.count("assert ") >= 3, "fewer than three asserts"
    assert "manual_seed" in code, "not seeded"
    checked = self_checking_exercises(nb)
    assert set(checked) <= set(exercises), f"ex.check on labels that are no exercise here: {set(checked) - set(exercises)}"
    if path.name in SELF_CHECKING:
        assert len(checked) >= 2, f"only {len(checked)} self-checking exercises: {checked}"


# Notebooks held to at least two self-checking exercises (issue 15): every chapter and the
# performance appendix. Whoever adds a notebook with exercises (helpers/exercises/__init__.py says
# how) adds it here; chapters are counted by test_chapter_standard, other pages by
# test_self_checking_pages_beyond_the_chapters.
SELF_CHECKING = {"01_forward_pass.ipynb", "02_problem.ipynb", "03_lagrangian.ipynb", "04_adjoint_equation.ipynb", "05_vjp.ipynb", "06_adjoint_algorithm.ipynb", "07_training.ipynb",
                 "08_what_is_the_adjoint.ipynb", "09_time_gradients.ipynb", "10_when_adjoint_fails.ipynb", "12_choosing_a_method.ipynb", "13_learning_the_clock.ipynb", "11_losses_along_the_path.ipynb",
                 "appendix_performance.ipynb"}


@pytest.mark.parametrize("name", sorted(n for n in SELF_CHECKING if not re.match(r"\d\d_", n)))
def test_self_checking_pages_beyond_the_chapters(name):
    """A page outside the numbered chapters (the appendix) in SELF_CHECKING: at least two
    exercises checked by ex.check, each with a dropdown solution asserting its answer is right."""
    path = ROOT / "book" / name
    assert path in NOTEBOOKS, f"{name} is not one of the book's notebooks"
    nb = load(path)
    exercises = re.findall(r"```\{exercise-start\}\s*\n:label: (\S+)", markdown(nb))
    checked = self_checking_exercises(nb)
    assert set(checked) <= set(exercises), f"ex.check on labels that are no exercise here: {set(checked) - set(exercises)}"
    assert len(checked) >= 2, f"only {len(checked)} self-checking exercises: {checked}"


def self_checking_exercises(nb) -> list:
    """Labels whose exercise has a check cell in the main text (the reader's starter checked by
    ``ex.check(label, ...)``) and whose dropdown solution asserts that its answer is right."""
    main, solution_cells = split_notebook(nb)
    solutions = {label: "\n".join(sources) for label, sources in solution_cells.items()}
    called = re.findall(r'ex\.check\("([^"]+)"', "\n".join(main))
    return [label for label in dict.fromkeys(called)
            if re.search(rf'assert ex\.check\("{re.escape(label)}", .*\)\.status == "right"',
                         solutions.get(label, ""))]


# characters of the code font that fit the text column at a 1280-px window (helpers.display.COLUMN)
CODE_COLUMN = 68


def fenced_code_lines(text):
    """The lines of the code blocks a Markdown cell shows (```python fences; not ```{directive})."""
    lines, open_fence = [], None  # None outside a fence, else "code" or "directive"
    for line in text.splitlines():
        stripped = line.strip()
        if open_fence is None and stripped.startswith("```"):
            open_fence = "directive" if stripped[3:].startswith("{") else "code"
        elif open_fence is not None and stripped == "```":
            open_fence = None
        elif open_fence == "code":
            lines.append(line)
    return lines


def test_fenced_code_lines_are_found():
    text = "```{exercise-start}\n:label: a\n```\ntext\n```python\nx = 1\n```\n```\ny\n```"
    assert fenced_code_lines(text) == ["x = 1", "y"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_code_fits_the_column(path):
    """Every line of every code cell the book shows fits the code column (the hidden setup cell aside)."""
    from helpers.display import COLUMN

    assert COLUMN == CODE_COLUMN
    long = []
    for i, cell in enumerate(load(path)["cells"]):
        if cell["cell_type"] == "markdown":
            lines = fenced_code_lines("".join(cell["source"]))
        elif cell["cell_type"] != "code" or "remove-cell" in cell["metadata"].get("tags", []):
            continue
        else:
            lines = "".join(cell["source"]).splitlines()
        for n, line in enumerate(lines, 1):
            if len(line) > CODE_COLUMN:
                long.append(f"cell {i} line {n} ({len(line)} characters): {line.strip()[:50]}")
    assert not long, f"{path.name}: {len(long)} code lines wider than {CODE_COLUMN}:\n" + "\n".join(long)
