"""Keep every notebook under book/ in the form the book stores it.

- The first cell is the setup cell (hidden in the book by its ``remove-cell`` tag): in Google
  Colab it installs ``helpers`` from the repository named in ``_config.yml``; elsewhere it makes
  ``import helpers`` work from a checkout.
- No outputs or execution counts are stored.
- The kernelspec is ``python3``.

Run ``python scripts/tidy_notebooks.py`` after editing a notebook or changing ``repository.url``
in ``_config.yml``; ``--check`` only reports what it would change (the tests use it).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
MARKER = "# book-setup-cell"

SETUP_TEMPLATE = '''{marker}: hidden in the rendered book. In Google Colab, install `helpers` from the
# book's repository; elsewhere use the installed package, or the checkout this notebook sits in.
import subprocess
import sys

REPOSITORY = "{url}"
if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"git+{{REPOSITORY}}"], check=True)
else:
    try:
        import helpers  # noqa: F401
    except ImportError:
        sys.path.insert(0, "..")'''

KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def repository_url() -> str:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    return config["repository"]["url"].rstrip("/")


def setup_source(url: str) -> str:
    return SETUP_TEMPLATE.format(marker=MARKER, url=url)


def setup_cell(url: str) -> dict:
    return {
        "cell_type": "code",
        "id": "book-setup",
        "execution_count": None,
        "metadata": {"tags": ["remove-cell"]},
        "outputs": [],
        "source": setup_source(url).splitlines(keepends=True),
    }


def tidy(nb: dict, url: str) -> dict:
    cells = [c for c in nb["cells"] if not "".join(c.get("source", "")).startswith(MARKER)]
    seen = set()
    for i, cell in enumerate(cells):
        cell.setdefault("id", f"cell-{i:03d}")  # nbformat 4.5 wants an id on every cell
        if cell["id"] in seen:  # a cell inserted later took an id by position that another kept
            cell["id"] = next(f"cell-{i:03d}{s}" for s in ("", *"abcdefghij") if f"cell-{i:03d}{s}" not in seen)
        seen.add(cell["id"])
        if cell["cell_type"] == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        cell.get("metadata", {}).pop("execution", None)
    nb["cells"] = [setup_cell(url)] + cells
    nb["nbformat"], nb["nbformat_minor"] = 4, max(nb.get("nbformat_minor", 5), 5)
    nb.setdefault("metadata", {})["kernelspec"] = KERNELSPEC
    nb["metadata"].pop("widgets", None)
    return nb


def notebooks():
    return sorted(p for p in (ROOT / "book").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report notebooks that would change; change nothing")
    args = parser.parse_args(argv)
    url = repository_url()
    changed = []
    for path in notebooks():
        text = path.read_text()
        nb = tidy(json.loads(text), url)
        new = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
        if new != text:
            changed.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(new)
    verb = "would change" if args.check else "tidied"
    for p in changed:
        print(f"{verb}: {p}")
    return 1 if (args.check and changed) else 0


if __name__ == "__main__":
    sys.exit(main())
