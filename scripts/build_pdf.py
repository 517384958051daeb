"""Build the book as one PDF, ``_build/pdf/book.pdf``: ``./run pdf`` calls this.

The route needs no network: Jupyter Book builds the whole book as a single HTML page (Sphinx's
``singlehtml`` builder, into ``_build/singlehtml``; the notebooks' outputs come from the jupyter
cache that the HTML build fills, so nothing re-executes when it is current), and Debian's Chromium,
driven by playwright, prints that page with MathJax 3 served from ``node_modules/mathjax``.
Before printing, the page gets a title page and a table of contents with page numbers (two
passes: the first print tells on which page each chapter starts), a page break before each
chapter, the parts' captions from ``_toc.yml``, every dropdown opened, and its cross-references
(equations, chapters, figures) turned into links within the page, which Chromium keeps as links
in the PDF. ``book/_static/pdf.css`` is the print style sheet. The PDF has page numbers in its
footer and bookmarks (the outline) for the chapters and sections.

    python scripts/build_pdf.py [--no-build] [--out _build/pdf/book.pdf]

Needs Debian's ``chromium`` (never ``playwright install``), ``node_modules/mathjax`` (``npm install
mathjax@3``) and poppler's ``pdfinfo`` (Debian's ``poppler-utils``), which the run script installs.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import pathlib
import re
import shutil
import subprocess
import sys
import threading
import time

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUILD = ROOT / "_build"
SINGLE = BUILD / "singlehtml"
# The single-page build keeps its own Sphinx environment, so that it never rewrites the one the
# HTML build (``_build/.doctrees``) works from; the jupyter cache (``_build/.jupyter_cache``) is
# shared, which is what saves the notebooks from running twice.
DOCTREES = BUILD / ".doctrees-singlehtml"
PDF = BUILD / "pdf" / "book.pdf"
CSS = ROOT / "book" / "_static" / "pdf.css"
MATHJAX = ROOT / "node_modules" / "mathjax" / "es5"
CDN = "https://cdn.jsdelivr.net/npm/mathjax@3/es5/"
# A4 printed at this scale lays the page out about 820 CSS pixels wide: the width of the HTML
# book's text column at a 1280-px window, for which the code and the equations are sized.
SCALE = 0.8
MARGIN = {"top": "16mm", "bottom": "18mm", "left": "17mm", "right": "17mm"}


def chromium() -> str | None:
    """The browser to print with: ``$CHROMIUM`` if set, else Debian's ``chromium``, else the
    names GitHub's Ubuntu runners give Chromium and Chrome."""
    import os

    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def toc_parts() -> tuple[str, list[dict]]:
    """The root page and the parts of ``_toc.yml``: each a dict with caption, numbered, files."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    parts = [{"caption": part.get("caption", ""), "numbered": bool(part.get("numbered")),
              "files": [chapter["file"] for chapter in part["chapters"]]}
             for part in toc.get("parts", [])]
    return toc["root"], parts


def sources() -> list[pathlib.Path]:
    """The files the PDF is made from (a PDF older than any of them is out of date)."""
    root, parts = toc_parts()
    found = [ROOT / "_toc.yml", ROOT / "_config.yml", ROOT / "references.bib", CSS,
             pathlib.Path(__file__).resolve()]
    for name in [root] + [f for part in parts for f in part["files"]]:
        found += [p for p in (ROOT / f"{name}.ipynb", ROOT / f"{name}.md") if p.exists()]
    return found


def _links_keep_their_page() -> None:
    """Keep the page of the book in each link to a section of another page.

    Sphinx's ``singlehtml`` builder rewrites such a link, ``#document-PAGE#ID``, as
    ``ROOT.html#ID``, and ids such as "summary" or "exercises" recur from page to page, so the
    link could only go to the first of them. Here it becomes ``ROOT.html#ID|PAGE``; the page is
    read back before printing (``PREPARE``), which points the link at the ``ID`` in ``PAGE``.
    """
    from sphinx.builders.singlehtml import SingleFileHTMLBuilder

    if getattr(SingleFileHTMLBuilder.fix_refuris, "_keeps_page", False):
        return

    def fix_refuris(self, tree) -> None:
        from docutils import nodes

        fname = self.config.root_doc + self.out_suffix
        for refnode in tree.findall(nodes.reference):
            refuri = refnode.get("refuri", "")
            first = refuri.find("#")
            second = refuri.find("#", first + 1) if first >= 0 else -1
            if second < 0:
                continue
            page = refuri[first + 1:second]
            page = page[len("document-"):] if page.startswith("document-") else ""
            refnode["refuri"] = fname + refuri[second:] + (f"|{page}" if page else "")

    fix_refuris._keeps_page = True
    SingleFileHTMLBuilder.fix_refuris = fix_refuris


def _html_handlers_for_singlehtml() -> None:
    """Give the ``singlehtml`` builder the HTML handlers of every extension's nodes.

    Sphinx looks up an extension's node handlers under the builder's name and falls back to its
    format ("html") only when no extension registered any under that name. sphinx-exercise
    registers its nodes for "singlehtml" too, so sphinx-proof's theorem and proposition nodes,
    registered for "html" alone, would have no handler and the build stops with
    "departing unknown node type: proposition_node". Merging the two tables fixes that.
    """
    from sphinx.registry import SphinxComponentRegistry

    if getattr(SphinxComponentRegistry.create_translator, "_merged_html", False):
        return
    original = SphinxComponentRegistry.create_translator

    def create_translator(self, builder, *args):
        own = self.translation_handlers.get(builder.name)
        if own is not None and builder.name != builder.format:
            merged = dict(self.translation_handlers.get(builder.format, {}))
            merged.update(own)
            self.translation_handlers[builder.name] = merged
        return original(self, builder, *args)

    create_translator._merged_html = True
    SphinxComponentRegistry.create_translator = create_translator


def build_singlehtml(*, strict: bool = True) -> None:
    """Jupyter Book's ``singlehtml`` build of the book into ``_build/singlehtml``.

    The same configuration as ``jupyter-book build . --builder singlehtml`` (which would share the
    HTML build's Sphinx environment), with warnings as errors. The environment is started afresh
    when ``_toc.yml`` or ``_config.yml`` changed since the last build: an incremental build on a
    changed table of contents fails inside sphinx-external-toc (a KeyError on the moved page).
    """
    from jupyter_book.cli.main import build
    from jupyter_book.sphinx import build_sphinx

    _html_handlers_for_singlehtml()
    _links_keep_their_page()
    path_config, source, overrides = build.callback(
        path_source=str(ROOT), path_output=None, config=None, toc=None, warningiserror=strict,
        nitpick=False, keep_going=True, freshenv=False, builder="singlehtml",
        custom_builder=None, verbose=0, quiet=0, individualpages=False, get_config_only=True)
    pickle = DOCTREES / "environment.pickle"
    fresh = not pickle.exists() or any(
        p.stat().st_mtime > pickle.stat().st_mtime for p in (ROOT / "_toc.yml", ROOT / "_config.yml"))
    result = build_sphinx(source, SINGLE, use_external_toc=True, noconfig=True,
                          path_config=path_config, confoverrides=overrides, doctreedir=DOCTREES,
                          builder="singlehtml", warningiserror=strict, keep_going=True,
                          freshenv=fresh)
    if isinstance(result, Exception) or result:
        raise SystemExit(f"the single-page build failed ({result!r}); its messages are above")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(directory: pathlib.Path):
    """Serve ``directory`` on 127.0.0.1 at a free port; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()


def answer_locally(route, request, base_url: str, page: pathlib.Path):
    """MathJax's CDN from ``node_modules/mathjax``, the book from its server, nothing else.

    The single page is answered at the server's root (``base_url + "book.html"``): Sphinx writes
    it to ``book/preface.html`` (the root page's name) but with every address (style sheets,
    scripts, images) relative to the output folder, so opened where it lies it has no styles and
    no figures.
    """
    url = request.url
    if url.split("#")[0].split("?")[0] == base_url + "book.html":
        return route.fulfill(path=str(page), content_type="text/html; charset=utf-8")
    if url.startswith(CDN):
        path = MATHJAX / url[len(CDN):].split("?")[0]
        if path.is_file():
            return route.fulfill(path=str(path))
        return route.fulfill(status=404, body="not in the local MathJax copy")
    if url.startswith(base_url) or url.startswith("data:"):
        return route.continue_()
    return route.abort()  # no network: anything else would only time out


# Runs once in the page before the first print: title page, contents, parts, page breaks, links.
PREPARE = r"""(book) => {
  const article = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  // every dropdown and hidden cell open: paper cannot be clicked
  document.querySelectorAll('details').forEach(d => d.open = true);
  document.querySelectorAll('.toggle-hidden').forEach(e => e.classList.remove('toggle-hidden'));
  document.querySelectorAll('.dropdown').forEach(e => e.classList.add('toggle-shown'));
  // each page of the book starts at a marker <span id="document-NAME">; its section follows
  const starts = {};
  for (const span of article.querySelectorAll('span[id^="document-"]')) {
    const name = span.id.slice('document-'.length);
    let section = span.nextElementSibling;
    while (section && section.tagName !== 'SECTION') section = section.nextElementSibling;
    if (section) starts[name] = section;
  }
  const first = article.querySelector('section');
  if (first && !Object.values(starts).includes(first)) starts[book.root] = first;
  const title = (name) => {
    const h1 = starts[name] && starts[name].querySelector('h1, h2');
    if (!h1) return name;
    const copy = h1.cloneNode(true);
    copy.querySelectorAll('.headerlink').forEach(e => e.remove());
    return copy.textContent.replace(/\s+/g, ' ').trim();
  };
  // each page of the book gets an anchor of its own: section ids repeat from page to page
  const anchor = (name) => starts[name] ? 'pdf-' + name.replace(/[^A-Za-z0-9_-]/g, '-') : '';
  // the parts' captions, each before its first chapter, on that chapter's first page
  for (const part of book.parts) {
    const section = starts[part.files[0]];
    if (!section || !part.caption) continue;
    const div = document.createElement('div');
    div.className = 'pdf-part';
    div.textContent = part.caption;
    section.prepend(div);
  }
  for (const [name, section] of Object.entries(starts)) {
    section.classList.add('pdf-chapter');
    const mark = document.createElement('a');
    mark.id = anchor(name);
    section.prepend(mark);
  }
  // Sphinx makes ids unique within a page, not across the book ("summary", "exercises", "id2"
  // recur): a link to such an id goes to the occurrence in the page it names (the build keeps
  // it as "#ID|PAGE") or else in its own page of the book, which is renamed to be unique
  const byId = {};
  for (const el of article.querySelectorAll('[id]')) (byId[el.id] = byId[el.id] || []).push(el);
  const home = (el) => el.closest('section.pdf-chapter');
  let ambiguous = 0, elsewhere = 0;
  const resolve = (a, target, page) => {
    const all = byId[target];
    if (!all || all.length < 2) return target;
    const own = all.find(el => home(el) === (page || home(a)));
    if (!own) { ambiguous += 1; return target; }
    if (page && page !== home(a)) elsewhere += 1;
    if (own === all[0]) return target;
    if (!own.dataset.pdfId) own.dataset.pdfId = own.id = target + '--' + all.indexOf(own);
    return own.id;
  };
  // cross-references: the single page's builder writes them as "book/preface.html#target" or
  // "#document-NAME", neither of which lands on this page; point each at its target's id
  // a link to a file of the HTML book (a notebook download, the PDF itself) has no place on
  // paper: it keeps its text and loses its address
  const missing = [];
  for (const a of document.querySelectorAll('a[href]')) {
    const href = a.getAttribute('href');
    if (/^[a-z]+:/i.test(href) && !href.startsWith(location.origin)) continue;
    const hash = href.indexOf('#');
    if (hash < 0) { a.removeAttribute('href'); continue; }
    let target = decodeURIComponent(href.slice(hash + 1));
    let page = null;
    const bar = target.lastIndexOf('|');
    if (bar >= 0) {
      page = starts[target.slice(bar + 1)] || null;
      target = target.slice(0, bar);
    }
    if (target.startsWith('document-')) {
      const name = target.slice('document-'.length);
      target = anchor(name) || target;
    }
    if (target && document.getElementById(target)) {
      a.setAttribute('href', '#' + resolve(a, target, page));
    } else if (target) {
      missing.push(href);
    }
  }
  // title page and contents, with a placeholder page number each (filled in before the second print)
  const front = document.createElement('div');
  front.className = 'pdf-front';
  const head = document.createElement('div');
  head.className = 'pdf-title';
  head.innerHTML = '<h1></h1><p class="pdf-author"></p><p class="pdf-date"></p>';
  head.querySelector('h1').textContent = book.title;
  head.querySelector('.pdf-author').textContent = book.author;
  head.querySelector('.pdf-date').textContent = book.date;
  front.append(head);
  const contents = document.createElement('nav');
  contents.className = 'pdf-contents';
  contents.innerHTML = '<h2>Contents</h2>';
  const absent = [];
  const entry = (name, cls) => {
    if (!starts[name]) { absent.push(name); return; }
    const row = document.createElement('a');
    row.className = 'pdf-entry ' + cls;
    row.href = '#' + anchor(name);
    row.dataset.target = anchor(name);
    row.innerHTML = '<span class="pdf-entry-title"></span><span class="pdf-dots"></span><span class="pdf-page">000</span>';
    row.querySelector('.pdf-entry-title').textContent = title(name);
    contents.append(row);
  };
  entry(book.root, 'pdf-entry-front');
  for (const part of book.parts) {
    if (part.caption) {
      const cap = document.createElement('div');
      cap.className = 'pdf-contents-part';
      cap.textContent = part.caption;
      contents.append(cap);
    }
    for (const name of part.files) entry(name, '');
  }
  front.append(contents);
  article.prepend(front);
  return {chapters: Object.keys(starts), missing, absent, ambiguous, elsewhere,
          titles: [book.root].concat(...book.parts.map(p => p.files)).map(title)};
}"""

FILL_PAGES = r"""(pages) => {
  for (const row of document.querySelectorAll('a.pdf-entry')) {
    const page = pages[row.dataset.target];
    row.querySelector('.pdf-page').textContent = page && row.dataset.target ? String(page) : '';
  }
}"""

# Content wider than its box, as printed (the same measure as tests/test_browser.py's, in short).
OVERFLOW = r"""() => {
  const out = [];
  for (const c of document.querySelectorAll('mjx-container[display="true"], pre, .cell_output .output')) {
    if (c.scrollWidth > c.clientWidth + 1 && c.clientWidth > 0)
      out.push(c.textContent.replace(/\s+/g, ' ').trim().slice(0, 50));
  }
  return out;
}"""


def destinations(pdf: pathlib.Path) -> dict[str, int]:
    """The named destinations of a PDF (Chromium writes one per link target), id -> page."""
    text = subprocess.run(["pdfinfo", "-dests", str(pdf)], check=True, capture_output=True,
                          text=True).stdout
    pages = {}
    for line in text.splitlines():
        m = re.match(r"\s*(\d+)\s+\[.*?\]\s+\"(.*)\"\s*$", line)
        if m:
            pages[m.group(2)] = int(m.group(1))
    return pages


def print_pdf(html_dir: pathlib.Path, out: pathlib.Path) -> dict:
    """Print the single-page book in ``html_dir`` to ``out``; returns what was found on the way."""
    from playwright.sync_api import sync_playwright

    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    root, parts = toc_parts()
    book = {"title": config.get("title", ""), "author": config.get("author", ""),
            "date": time.strftime("%d %B %Y").lstrip("0"), "root": root, "parts": parts}
    page_file = f"{root}.html"
    if not (html_dir / page_file).is_file():
        raise SystemExit(f"no single-page build at {html_dir / page_file}")
    out.parent.mkdir(parents=True, exist_ok=True)
    footer = ('<div style="width:100%;font-size:8pt;color:#555;text-align:center;'
              'font-family:sans-serif"><span class="pageNumber"></span></div>')
    options = dict(format="A4", scale=SCALE, margin=MARGIN, print_background=True,
                   display_header_footer=True, header_template="<span></span>",
                   footer_template=footer, outline=True, tagged=True)
    clock, timing = time.time(), {}
    with serve(html_dir) as base_url, sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium(),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            # the viewport is the printed width, so that what is measured here is what prints
            width = round((210 - 34) / 25.4 * 96 / SCALE)
            page = browser.new_page(viewport={"width": width, "height": 1100})
            page.route("**/*", lambda route, request: answer_locally(
                route, request, base_url, html_dir / page_file))
            # what did not load, except what paper does without: the search index (the single
            # page has no search, but its script asks for one) and the hover previews' data
            # (sphinx-tippy writes none for the single page)
            failed = []
            unneeded = ("searchindex.js", "/_static/tippy/")
            page.on("requestfailed", lambda r: failed.append(r.url)
                    if not any(u in r.url for u in unneeded) else None)
            page.on("response", lambda r: failed.append(r.url)
                    if r.status >= 400 and not any(u in r.url for u in unneeded) else None)
            page.goto(base_url + "book.html", wait_until="load", timeout=120000)
            page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise",
                                   timeout=60000)
            page.evaluate("() => MathJax.startup.promise")
            timing["typeset"] = time.time() - clock
            errors = page.evaluate("() => document.querySelectorAll('mjx-merror').length")
            page.add_style_tag(content=CSS.read_text(encoding="utf-8"))
            found = page.evaluate(PREPARE, book)
            page.emulate_media(media="print")
            page.evaluate("() => document.fonts.ready")
            page.wait_for_function("() => Array.from(document.images).every(i => i.complete)",
                                   timeout=60000)
            found["overflow"] = page.evaluate(OVERFLOW)
            found["tex_errors"] = errors
            found["failed"] = failed
            found["broken_images"] = page.evaluate(
                "() => Array.from(document.images).filter(i => !i.naturalWidth).map(i => i.src)")
            first = out.with_suffix(".pass1.pdf")
            timing["prepared"] = time.time() - clock
            page.pdf(path=str(first), **options)
            timing["first print"] = time.time() - clock
            dests = destinations(first)
            first.unlink()
            page.evaluate(FILL_PAGES, dests)
            page.pdf(path=str(out), **options)
            timing["second print"] = time.time() - clock
        finally:
            browser.close()
    found["pages"] = dests
    found["timing"] = timing
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-build", action="store_true",
                        help="print the existing _build/singlehtml without building it first")
    parser.add_argument("--out", default=str(PDF))
    args = parser.parse_args(argv)
    if chromium() is None:
        raise SystemExit("chromium is missing (apt-get install chromium; ./run pdf installs it)")
    if shutil.which("pdfinfo") is None:
        raise SystemExit("pdfinfo is missing (apt-get install poppler-utils; ./run pdf installs it)")
    if not (MATHJAX / "tex-mml-chtml.js").is_file():
        raise SystemExit(f"no MathJax 3 at {MATHJAX} (npm install mathjax@3; ./run pdf does it)")
    start = time.time()
    if not args.no_build:
        build_singlehtml()
    built = time.time()
    out = pathlib.Path(args.out)
    found = print_pdf(SINGLE, out)
    for problem in found["missing"]:
        print(f"warning: a link whose target is not in the book: {problem}", file=sys.stderr)
    if found["ambiguous"]:
        print(f"warning: {found['ambiguous']} links name an id that several pages of the book use "
              "and none in the page they came from; they go to the first", file=sys.stderr)
    # what the links came to, beside the PDF, for tests/test_pdf.py
    links = {k: found[k] for k in ("ambiguous", "elsewhere")} | {"missing": len(found["missing"])}
    out.with_suffix(".links.json").write_text(json.dumps(links, indent=1) + "\n")
    for name in found["absent"]:
        print(f"error: {name} is in _toc.yml but not in the single-page build", file=sys.stderr)
    for problem in found["failed"] + found["broken_images"]:
        print(f"warning: not loaded: {problem}", file=sys.stderr)
    for problem in found["overflow"]:
        print(f"warning: wider than the printed column: {problem}", file=sys.stderr)
    print(f"{len(found['titles'])} pages of _toc.yml printed to {out} "
          f"(single-page build {built - start:.0f} s, printing {time.time() - built:.0f} s)")
    print("  " + ", ".join(f"{k} at {v:.0f} s" for k, v in found["timing"].items()))
    if found["tex_errors"]:
        print(f"error: {found['tex_errors']} formulas MathJax could not typeset", file=sys.stderr)
    return 1 if found["tex_errors"] or found["absent"] or found["broken_images"] else 0


if __name__ == "__main__":
    sys.exit(main())
