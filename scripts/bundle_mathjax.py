"""Make a built book readable offline: copy MathJax 3 into it and point every page at that copy.

``./run book --offline`` calls this after the build. The published book keeps loading MathJax from
its CDN; this rewrites only the built HTML under ``_build/html`` (or the folder given).

    python scripts/bundle_mathjax.py [HTML_DIR] [--mathjax node_modules/mathjax/es5]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CDN = "https://cdn.jsdelivr.net/npm/mathjax@3/es5/"
TARGET = pathlib.Path("_static") / "mathjax"


def bundle(html_dir: pathlib.Path, mathjax_dir: pathlib.Path) -> int:
    """Copy ``mathjax_dir`` to ``html_dir/_static/mathjax`` and rewrite the CDN address in every page.

    **Returns:** the number of pages rewritten.
    """
    if not (mathjax_dir / "tex-mml-chtml.js").is_file():
        raise FileNotFoundError(f"no MathJax 3 at {mathjax_dir} (npm install mathjax@3)")
    destination = html_dir / TARGET
    shutil.rmtree(destination, ignore_errors=True)
    shutil.copytree(mathjax_dir, destination)
    rewritten = 0
    for page in html_dir.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        if CDN not in text:
            continue
        relative = os.path.relpath(destination, page.parent).replace(os.sep, "/") + "/"
        page.write_text(text.replace(CDN, relative), encoding="utf-8")
        rewritten += 1
    return rewritten


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html_dir", nargs="?", default=str(ROOT / "_build" / "html"))
    parser.add_argument("--mathjax", default=str(ROOT / "node_modules" / "mathjax" / "es5"))
    args = parser.parse_args(argv)
    n = bundle(pathlib.Path(args.html_dir), pathlib.Path(args.mathjax))
    print(f"bundled MathJax into {args.html_dir}/{TARGET.as_posix()}; {n} pages now load it locally")
    return 0


if __name__ == "__main__":
    sys.exit(main())
