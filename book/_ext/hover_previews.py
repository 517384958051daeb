"""Hover previews: sphinx-tippy's tips, served from the book and typeset where they appear.

``_config.yml`` turns on sphinx-tippy, which writes for each page the tip of every link in its
text: a reference to an equation shows the equation, a citation the bibliography entry, a
glossary term its definition. It is configured there to fetch nothing at build time, and to load
tippy.js and @popperjs/core from the book's ``_static`` (copied from ``node_modules``, which
``./run`` fills with npm) instead of a CDN. This extension adds what the configuration cannot:

1. A clear error when those two scripts are missing from ``node_modules``, instead of a warning
   about ``html_static_path`` and a book whose tips silently fail to load.
2. MathJax on every page. A tip may show an equation on a page whose own text has no maths, and
   Sphinx loads MathJax only on pages with maths.
3. ``book/_static/hover_previews.js`` and ``.css``: the tips' maths typeset once the tip is in the
   page (sphinx-tippy's own MathJax option typesets it before, at the wrong size), and the tips
   drawn in the page's colours.
4. A quicker parse. sphinx-tippy reads every page with BeautifulSoup to find its links and the
   targets of tips, and four tags in five of the book's pages are the highlighting spans inside
   code blocks, which hold neither. It is handed the pages with those blocks as plain text, which
   keeps every link and id and cut its parsing from 13.5 s to 3.4 s for the book's 20 pages
   (it had made a full build about 20 s slower).
5. Only the current tip scripts in ``_static/tippy``. sphinx-tippy names each page's script anew
   at every build and its clean-up misses pages in a folder (all of the book's), so every rebuild
   left one more script per page behind.
"""
from __future__ import annotations

import os
import re

from sphinx.errors import ExtensionError

CODE = re.compile(r'(<div class="highlight"><pre>)(.*?)(</pre>)', re.S)
TAG = re.compile(r"<[^>]+>")
SCRIPT = re.compile(r'<script[^>]*\ssrc="([^"?#]*_static/tippy/[^"?#]+\.js)')


def parse_code_as_text() -> None:
    import sphinx_tippy
    from bs4 import BeautifulSoup

    def soup(markup, *args, **kwargs):
        if isinstance(markup, str):
            markup = CODE.sub(lambda m: m.group(1) + TAG.sub("", m.group(2)) + m.group(3), markup)
        return BeautifulSoup(markup, *args, **kwargs)

    sphinx_tippy.BeautifulSoup = soup

STATIC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_static")


def check_scripts(app, config) -> None:
    missing = [entry for entry in config.html_static_path
               if "node_modules" in str(entry)
               and not os.path.exists(os.path.join(app.confdir, entry))]
    if missing:
        raise ExtensionError(
            "the hover previews' scripts are missing: " + ", ".join(map(str, missing))
            + ". Install them with `npm install --no-save tippy.js@6.3.7 @popperjs/core@2.11.8`"
            " (`./run book` does it)")
    config.html_static_path.append(STATIC)


def maths_on_every_page(app, pagename, templatename, context, doctree) -> None:
    if doctree is not None:
        app.env.get_domain("math").data["has_equations"][pagename] = True


def drop_old_tip_scripts(app, exception) -> None:
    """Delete the scripts in _static/tippy that no page of the build refers to any more.

    sphinx-tippy knows only the pages written in this build, so the pages are read instead."""
    folder = os.path.join(app.outdir, "_static", "tippy")
    if exception or app.builder.format != "html" or not os.path.isdir(folder):
        return
    used = set()
    for parent, _, files in os.walk(app.outdir):
        for name in files:
            if name.endswith(".html"):
                with open(os.path.join(parent, name), encoding="utf-8") as page:
                    for src in SCRIPT.findall(page.read()):
                        used.add(os.path.normpath(os.path.join(parent, src)))
    for parent, _, files in os.walk(folder):
        for name in files:
            path = os.path.normpath(os.path.join(parent, name))
            if name.endswith(".js") and path not in used:
                os.remove(path)


def setup(app):
    parse_code_as_text()
    app.connect("config-inited", check_scripts, priority=400)  # before Sphinx drops missing paths
    app.connect("html-page-context", maths_on_every_page, priority=450)
    app.connect("build-finished", drop_old_tip_scripts, priority=900)  # after sphinx-tippy's
    app.add_js_file("hover_previews.js", loading_method="defer")
    app.add_css_file("hover_previews.css")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
