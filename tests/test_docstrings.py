"""Every public name of helpers documents its arguments and results and points back to the book."""
from __future__ import annotations

import inspect
import sys

import pytest

import helpers

PUBLIC = [getattr(helpers, name) for name in helpers.__all__ if not isinstance(getattr(helpers, name), dict)]


@pytest.mark.parametrize("obj", PUBLIC, ids=lambda o: o.__name__)
def test_public_names_are_documented(obj):
    doc = inspect.getdoc(obj) or ""
    assert len(doc) > 40, f"{obj.__name__} has no real docstring"
    if inspect.isfunction(obj):
        if inspect.signature(obj).parameters:
            assert "Arguments:**" in doc, f"{obj.__name__}: no Arguments section"
        assert "**Returns:**" in doc, f"{obj.__name__}: no Returns section"
    module_doc = sys.modules[obj.__module__].__doc__ or ""
    assert "chapter" in module_doc or "chapter" in doc, f"{obj.__name__}: does not say which chapter introduces it"


# ---------------------------------------------------------------------------------------------
# Each public function and class names the chapter of the book that introduces it (the preface
# promises this). A docstring line of one of these forms, with a title the book has:
#   Introduced in the chapter "<title>".      the book introduces or explains it there
#   Used in the chapter "<title>".            it runs there, behind what the chapter shows
#   Not shown in the book; it extends the chapter "<title>".
import importlib  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import pkgutil  # noqa: E402
import re  # noqa: E402

BOOK = pathlib.Path(__file__).resolve().parent.parent / "book"
CHAPTER_LINE = re.compile(
    r'(?:Introduced in|Used in|Not shown in the book; it extends) the chapter "([^"]+)"')


def book_titles():
    """The first-level heading of every page of the book."""
    titles = set()
    for page in sorted(BOOK.glob("*.ipynb")) + sorted(BOOK.glob("*.md")):
        if page.suffix == ".ipynb":
            cells = json.loads(page.read_text())["cells"]
            text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        else:
            text = page.read_text()
        heading = re.search(r"^# (.+?)\s*$", text, re.M)
        if heading:
            titles.add(heading.group(1))
    return titles


def public_names():
    """(module, name, object) for every public function and class defined in a helpers module."""
    found = []
    for info in sorted(pkgutil.iter_modules(helpers.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"helpers.{info.name}")
        for name, obj in sorted(vars(module).items()):
            if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if getattr(obj, "__module__", None) == module.__name__:
                found.append((info.name, name, obj))
    return found


def test_book_titles_are_found():
    titles = book_titles()
    assert "Neural ODEs and the forward pass" in titles and "The problem" in titles
    assert len(titles) >= 12


def test_every_public_name_names_its_chapter():
    titles = book_titles()
    names = public_names()
    assert len(names) >= 70  # every module is seen, not only helpers.__all__
    missing, unknown = [], []
    for module, name, obj in names:
        chapters = CHAPTER_LINE.findall(inspect.getdoc(obj) or "")
        if not chapters:
            missing.append(f"helpers.{module}.{name}")
        unknown += [f"helpers.{module}.{name}: {c!r}" for c in chapters if c not in titles]
    assert not missing, f"{len(missing)} public names do not name their chapter: {missing}"
    assert not unknown, f"chapter titles the book does not have: {unknown}"


def test_problems_names_the_chapters_that_use_it_first():
    from helpers import problems

    assert CHAPTER_LINE.findall(inspect.getdoc(problems.LinearODE)) == [
        "Neural ODEs and the forward pass"]
    assert CHAPTER_LINE.findall(inspect.getdoc(problems.ExponentialODE)) == ["The Lagrangian"]
