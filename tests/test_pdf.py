"""The PDF edition, ``_build/pdf/book.pdf`` (``./run pdf``), read back with poppler's tools.

Builds it with ``scripts/build_pdf.py`` when it is missing or older than any of its sources (under
``./run test`` the HTML build has just filled the jupyter cache, so the single-page build only
reads the notebooks). Then checks, from the text ``pdftotext`` extracts: every page of ``_toc.yml``
starts a new page, in order, with its title as written in its source file; the contents page
gives each chapter's page; no TeX source is left; every page carries its number; and, from the
PDF itself, that the figures are embedded and that the cross-references are links that land.
``BOOK_PDF=path`` checks that PDF as it is instead. Without Chromium, poppler-utils or the local MathJax it is skipped with that reason, except
under CI, where it fails.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import build_pdf  # noqa: E402

PDF = build_pdf.PDF
CHECK_ONLY = os.environ.get("BOOK_PDF")  # a PDF to check as it is, never rebuilt


def _requirements_or_skip():
    problems = [f"{tool} is not installed (apt-get install {package}; ./run pdf does it)"
                for tool, package in (("pdftotext", "poppler-utils"),
                                      ("pdfimages", "poppler-utils"))
                if shutil.which(tool) is None]
    if build_pdf.chromium() is None:
        problems.append("chromium is not installed (apt-get install chromium; ./run pdf does it)")
    if not (build_pdf.MATHJAX / "tex-mml-chtml.js").is_file():
        problems.append("node_modules/mathjax is missing (npm install mathjax@3; ./run pdf does it)")
    if problems:
        if os.environ.get("CI"):
            pytest.fail("; ".join(problems))
        pytest.skip("; ".join(problems))


def toc_names():
    root, parts = build_pdf.toc_parts()
    return [root] + [name for part in parts for name in part["files"]]


def source_title(name: str) -> str:
    """The first level-1 heading of a page's source (a notebook's markdown cells or a .md file)."""
    notebook, markdown = ROOT / f"{name}.ipynb", ROOT / f"{name}.md"
    if notebook.exists():
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
        text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    else:
        text = markdown.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    match = re.search(r"^# (.+)$", text, re.M)
    assert match, f"{name} has no level-1 title"
    return match.group(1).strip()


def title_words(title: str) -> list[str]:
    """The parts of a title that print as plain text: its maths and markup left out."""
    plain = re.sub(r"\{[a-z:]+\}`([^`]*)`", r"\1", title)
    plain = plain.replace("`", "").replace("**", "").replace("*", "")
    return [" ".join(piece.split()) for piece in re.split(r"\$[^$]*\$", plain) if piece.strip()]


def squash(text: str) -> str:
    return " ".join(text.split())


def is_title(line: str, title: str) -> bool:
    """Whether a printed line is the title (its chapter number, "4. ", allowed in front)."""
    line = re.sub(r"^\d+\.\s+", "", squash(line))
    words = title_words(title)
    if "$" not in title:
        return line == words[0]
    return line.startswith(words[0]) and all(w in line for w in words)


@pytest.fixture(scope="module")
def pdf():
    _requirements_or_skip()
    if CHECK_ONLY:
        return pathlib.Path(CHECK_ONLY)
    newest = max(p.stat().st_mtime for p in build_pdf.sources())
    if not PDF.exists() or PDF.stat().st_mtime < newest:
        run = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_pdf.py")], cwd=ROOT,
                             capture_output=True, text=True, timeout=3000)
        assert run.returncode == 0, f"scripts/build_pdf.py failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return PDF


@pytest.fixture(scope="module")
def pages(pdf):
    """The text of each page, as pdftotext lays it out."""
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], check=True,
                          capture_output=True, text=True).stdout
    return text.split("\f")[:-1] if text.endswith("\f") else text.split("\f")


@pytest.fixture(scope="module")
def raw(pdf):
    return pdf.read_bytes()


def chapter_starts(pages):
    """For each page of _toc.yml, the first PDF page (1-based) whose top lines hold its title."""
    starts = {}
    first_body = next(i for i, page in enumerate(pages) if "Contents" in page) + 1
    for name in toc_names():
        title = source_title(name)
        after = max(starts.values(), default=first_body)
        for number in range(after + 1, len(pages) + 1):
            top = [line for line in pages[number - 1].splitlines() if line.strip()][:4]
            candidates = top + [a + " " + b for a, b in zip(top, top[1:])]  # a title on two lines
            if any(is_title(line, title) for line in candidates):
                starts[name] = number
                break
    return starts


def test_title_words():
    assert title_words("Choosing $\\lambda$: the adjoint equation") == ["Choosing", ": the adjoint equation"]
    assert title_words("Gradients with respect to t0") == ["Gradients with respect to t0"]


def test_every_page_of_the_toc_starts_a_page_in_order(pages):
    starts = chapter_starts(pages)
    missing = [f"{name} ({source_title(name)!r})" for name in toc_names() if name not in starts]
    assert not missing, f"not found at the top of a page after the previous chapter: {missing}"
    order = [starts[name] for name in toc_names()]
    assert order == sorted(order) and len(set(order)) == len(order), starts


def test_contents_gives_each_chapters_page(pages):
    contents = next(page for page in pages if "Contents" in page)
    listed = {}
    for line in contents.splitlines():
        m = re.match(r"\s*(.*?)\s{2,}(\d+)\s*$", line)
        if m:
            listed[squash(m.group(1))] = int(m.group(2))
    starts = chapter_starts(pages)
    for name in toc_names():
        entries = [page for title, page in listed.items() if is_title(title, source_title(name))]
        assert entries == [starts.get(name)], (
            f"{name}: the contents say {entries}, the chapter starts on page {starts.get(name)}")


def code_lines() -> set[str]:
    """Every line of code the book shows: its code cells, its fenced blocks, and helpers' source
    (``show_source`` prints it), whitespace squashed."""
    lines = set()
    for name in toc_names():
        notebook, markdown = ROOT / f"{name}.ipynb", ROOT / f"{name}.md"
        if notebook.exists():
            cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
            blocks = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
        else:
            blocks = re.findall(r"^```.*?\n(.*?)^```", markdown.read_text(encoding="utf-8"), re.M | re.S)
        lines.update(squash(line) for block in blocks for line in block.splitlines())
    for path in (ROOT / "helpers").rglob("*.py"):
        lines.update(squash(line) for line in path.read_text(encoding="utf-8").splitlines())
    lines.discard("")
    return lines


def tex_lines(pages, code) -> list[str]:
    """Lines holding $$ or a TeX command (\\frac, \\begin, \\mathrm, ...) that are not code.

    Code may hold TeX (a plot's label r"$\\mathrm{d}L$"), so a line passes when it is part of a
    line of the code the book shows."""
    leaks = []
    for number, page in enumerate(pages, start=1):
        for line in page.splitlines():
            if re.search(r"\$\$|\\[A-Za-z]+", line) and not any(squash(line) in c for c in code):
                leaks.append(f"page {number}: {line.strip()}")
    return leaks


def test_no_tex_source_in_the_text(pages):
    leaks = tex_lines(pages, code_lines())
    assert not leaks, f"{len(leaks)} lines with TeX left in the PDF's text: {leaks[:8]}"


def test_the_tex_check_finds_tex_in_prose_and_passes_code():
    code = {squash('ax.set_ylabel(r"$\\mathrm{d}L$")')}
    page = 'the adjoint \\frac{a}{b} and $$\n  ax.set_ylabel(r"$\\mathrm{d}L$")\nplain (4.2)'
    assert tex_lines([page], code) == ["page 1: the adjoint \\frac{a}{b} and $$"]


def test_more_than_a_handful_of_pages_each_numbered(pdf, pages):
    assert len(pages) > 3 * len(toc_names()), f"only {len(pages)} pages"
    # the text of each page's footer: the bottom 50 pt of the A4 sheet (842 pt high)
    footers = subprocess.run(["pdftotext", "-x", "0", "-y", "792", "-W", "596", "-H", "50",
                              str(pdf), "-"], check=True, capture_output=True, text=True).stdout
    footers = [squash(f) for f in footers.split("\f")][:len(pages)]
    wrong = [(number, footer) for number, footer in enumerate(footers, start=1)
             if footer != str(number)]
    assert not wrong, f"pages whose footer is not their number (page, footer): {wrong[:10]}"


def test_the_figures_are_embedded(pdf):
    """Every image of the single-page build is in the PDF (pdfimages lists each drawn image)."""
    listing = subprocess.run(["pdfimages", "-list", str(pdf)], check=True, capture_output=True,
                             text=True).stdout.splitlines()[2:]
    images = [row for row in listing if row.split()[2] == "image"]  # not "smask" (alpha)
    html = (build_pdf.SINGLE / f"{toc_names()[0]}.html").read_text(encoding="utf-8")
    figures = len(set(re.findall(r'<img[^>]*src="(_images/[^"]+)"', html)))
    assert figures > 10, f"only {figures} images in the single-page build"
    assert len(images) >= figures, f"{len(images)} images in the PDF for {figures} figures"


def test_cross_references_are_links_that_land(pdf, raw):
    """Equation and chapter references are links within the PDF, each to a destination it has."""
    dests = set(build_pdf.destinations(pdf))
    links = [re.sub(rb"#([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), name).decode()
             for name in re.findall(rb"/Dest /([^\s/<>\[\]()]+)", raw)]
    assert b"/Outlines" in raw, "the PDF has no bookmarks"
    equations = [name for name in links if name.startswith("equation-")]
    assert len(equations) > 50, f"only {len(equations)} links to equations"
    chapters = {name for name in links if name.startswith("pdf-book-")}  # scripts/build_pdf.py's
    assert len(chapters) >= len(toc_names()) - 1, f"links to only {len(chapters)} chapters"
    landing_nowhere = sorted(set(links) - dests)
    assert not landing_nowhere, f"links to destinations the PDF lacks: {landing_nowhere[:10]}"


def test_links_to_a_recurring_section_land_in_the_page_they_name(pdf):
    """Ids such as "summary" and "exercises" recur from page to page; a link from one page to
    another's goes to that page's (scripts/build_pdf.py keeps the page the build names), never
    to the first in the book. The build writes what became of the links beside the PDF."""
    report = pdf.with_suffix(".links.json")
    if not report.exists():
        pytest.skip(f"no {report.name} beside {pdf.name}: it comes from scripts/build_pdf.py")
    links = json.loads(report.read_text())
    assert links["ambiguous"] == 0, f"{links['ambiguous']} links went to the first of their ids"
    assert links["missing"] == 0
    assert links["elsewhere"] > 0, "no link to a recurring id in another page: the check saw none"


def test_the_html_book_links_the_pdf():
    """The HTML book's first page links book.pdf beside its pages, where the workflow puts it."""
    html = pathlib.Path(os.environ.get("BOOK_HTML", ROOT / "_build" / "html"))
    page = html / f"{toc_names()[0]}.html"
    if not page.exists():
        if os.environ.get("CI"):
            pytest.fail(f"the HTML book is not built ({page})")
        pytest.skip(f"the HTML book is not built ({page}; ./run book)")
    hrefs = re.findall(r'href="([^"#]*book\.pdf)"', page.read_text(encoding="utf-8"))
    assert hrefs, f"{page.name} does not link the PDF"
    for href in hrefs:
        assert (page.parent / href).resolve() == (html / "book.pdf").resolve(), href


def test_the_workflow_publishes_the_pdf_beside_the_pages():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text(encoding="utf-8"))
    steps = workflow["jobs"]["build"]["steps"]
    runs = [step.get("run", "") for step in steps]
    upload = next(i for i, step in enumerate(steps)
                  if step.get("uses", "").startswith("actions/upload-pages-artifact"))
    built = next(i for i, run in enumerate(runs) if "scripts/build_pdf.py" in run)
    copied = next(i for i, run in enumerate(runs) if "cp _build/pdf/book.pdf _build/html/book.pdf" in run)
    assert built <= copied < upload
    assert steps[upload]["with"]["path"] == "_build/html"
    assert "poppler-utils" in runs[built] and "mathjax@3" in runs[built]
