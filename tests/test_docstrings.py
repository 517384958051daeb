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
