"""The rendered book, opened in headless Chromium the way a reader meets it.

Serves ``_build/html`` (built by ``./run test`` before pytest runs) on 127.0.0.1 and opens every page.
The MathJax CDN is unreachable here, so requests for it are answered from a local copy of MathJax 3
(``node_modules/mathjax``, installed by ``./run test``); the published book keeps the CDN address.
Screenshots of every page land in ``_build/screenshots/``.
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import os
import pathlib
import re
import shutil
import sys
import threading

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
MATHJAX = ROOT / "node_modules" / "mathjax" / "es5"
SHOTS = ROOT / "_build" / "screenshots"
CDN = "https://cdn.jsdelivr.net/npm/mathjax@3/es5/"


def _requirements_or_skip():
    problems = []
    if shutil.which("chromium") is None:
        problems.append("Debian's chromium is not installed (apt-get install chromium; .ci/run does it)")
    if not MATHJAX.exists():
        problems.append("node_modules/mathjax is missing (./run test installs it with npm)")
    if not (HTML / "index.html").exists():
        problems.append("the book is not built (./run test builds it first)")
    if problems:
        if os.environ.get("CI"):
            pytest.fail("; ".join(problems))
        pytest.skip("; ".join(problems))


def toc_pages():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]


PAGES = toc_pages()

# Console messages that come from Jupyter Book 1's theme on every page, not from the book's content:
# sphinx-thebe and sphinx-book-theme both declare THEBE_JS_URL (a known JB 1.0 duplication), and the
# pydata theme logs its reset to "auto" when no light/dark choice is stored yet. Anything else fails.
THEME_NOISE = (
    "Identifier 'THEBE_JS_URL' has already been declared",
    "Got invalid theme mode: . Resetting to auto.",
)
NOTEBOOK_PAGES = [p for p in PAGES if (ROOT / f"{p}.ipynb").exists()]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(directory):
    """Serve ``directory`` on 127.0.0.1 at a free port; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def base_url():
    _requirements_or_skip()
    with serve(HTML) as url:
        yield url


@pytest.fixture(scope="module")
def browser(base_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium"),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        yield browser
        browser.close()


def _serve_locally(route, request, base_url):
    url = request.url
    if url.startswith(CDN):
        path = MATHJAX / url[len(CDN):].split("?")[0]
        if path.is_file():
            return route.fulfill(path=str(path), content_type="application/javascript")
        return route.fulfill(status=404, body="not in the local MathJax copy")
    if url.startswith(base_url) or url.startswith("data:"):
        return route.continue_()
    return route.abort()  # no network here: anything else would only time out


@pytest.fixture
def page(browser, base_url):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.errors = []
    page.on("console", lambda msg: page.errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.route("**/*", lambda route, request: _serve_locally(route, request, base_url))
    yield page
    context.close()


def open_page(page, base_url, name):
    page.goto(f"{base_url}{name}.html", wait_until="load")
    if page.evaluate("() => !!document.querySelector('script[src*=\"mathjax\"]')"):
        page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=30000)
        page.evaluate("() => MathJax.startup.promise")


@pytest.mark.parametrize("name", PAGES)
def test_page_renders(page, base_url, name):
    open_page(page, base_url, name)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{pathlib.Path(name).name}.png"), full_page=True)

    math = page.evaluate("() => document.querySelectorAll('mjx-container').length")
    source_math = len(re.findall(r"\$\$|\\\(|\\\[", (HTML / f"{name}.html").read_text()))
    if source_math:
        assert math > 0, "the page has formulas but MathJax typeset none"
    errors = page.evaluate("""() => Array.from(document.querySelectorAll(
        'mjx-merror, mjx-container [data-mjx-error], mjx-container mjx-mtext[style*="color: red"]'))
        .map(e => e.textContent || e.getAttribute('data-mjx-error'))""")
    assert errors == [], f"TeX errors or undefined macros: {errors[:5]}"
    prose = page.evaluate("""() => {
        const main = document.querySelector('article') || document.body;
        const copy = main.cloneNode(true);
        copy.querySelectorAll('pre, code, .cell_output, .highlight, script').forEach(e => e.remove());
        return copy.innerText; }""")
    assert "$$" not in prose, "raw $$ left in the text"
    assert "\\begin{" not in prose, "raw \\begin{ left in the text"
    broken = page.evaluate("""() => Array.from(document.images)
        .filter(img => !(img.complete && img.naturalWidth > 0)).map(img => img.src)""")
    assert broken == [], f"broken images: {broken}"
    errors = [e for e in page.errors if e not in THEME_NOISE]
    assert errors == [], f"console errors: {errors}"


def test_solutions_are_collapsed_until_clicked(page, base_url):
    open_page(page, base_url, "book/04_adjoint_equation")
    solution = page.locator(".solution.dropdown").first
    body = solution.locator("section, p").last
    assert not body.is_visible(), "a solution shows before it is clicked"
    solution.locator(".admonition-title").first.click()
    body.wait_for(state="visible", timeout=5000)
    assert body.is_visible()


def test_search_finds_a_chapter(page, base_url):
    page.goto(f"{base_url}search.html?q=Pontryagin", wait_until="load")
    page.wait_for_selector("ul.search li a", timeout=20000)
    hits = page.evaluate("() => Array.from(document.querySelectorAll('ul.search li a')).map(a => a.href)")
    assert any("08_what_is_the_adjoint" in h for h in hits), hits


def test_next_links_and_sidebar_reach_every_chapter(page, base_url):
    page.goto(f"{base_url}index.html", wait_until="load")
    page.wait_for_url(re.compile(r"preface\.html"), timeout=10000)
    sidebar = page.evaluate("() => Array.from(document.querySelectorAll('nav.bd-docs-nav a.reference')).map(a => a.href)")
    for name in PAGES[1:]:
        assert any(h.split("#")[0].endswith(f"{name}.html") for h in sidebar), f"{name} is not in the sidebar"
    visited = [re.sub(r"\.html.*$", "", page.url.replace(base_url, ""))]
    for _ in range(len(PAGES) + 2):
        nxt = page.locator("a.right-next")
        if nxt.count() == 0:
            break
        nxt.first.click()
        page.wait_for_load_state("load")
        visited.append(re.sub(r"\.html.*$", "", page.url.replace(base_url, "")))
    assert visited == PAGES, f"next links visit {visited}"


@pytest.mark.parametrize("name", NOTEBOOK_PAGES)
def test_notebook_page_links_to_colab_and_offers_the_download(page, base_url, name):
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"].rstrip("/")
    repo = url.split("github.com/")[1]
    open_page(page, base_url, name)
    links = page.evaluate("() => Array.from(document.querySelectorAll('a[href*=\"colab.research.google.com\"]')).map(a => a.href)")
    assert f"https://colab.research.google.com/github/{repo}/blob/main/{name}.ipynb" in links, links
    # the download button offers the notebook itself
    downloads = page.evaluate("() => Array.from(document.querySelectorAll('a[href$=\\'.ipynb\\']')).map(a => a.href)")
    assert any(d.endswith(f"_sources/{name}.ipynb") for d in downloads), downloads


def test_offline_build_needs_no_network(browser, base_url, tmp_path):
    """`./run book --offline` bundles MathJax: with every outside request refused, formulas still typeset."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from bundle_mathjax import bundle

    copy = tmp_path / "html"
    shutil.copytree(HTML, copy)
    assert bundle(copy, MATHJAX) >= len(PAGES) - 2
    assert "cdn.jsdelivr.net" not in (copy / "book" / "04_adjoint_equation.html").read_text()
    with serve(copy) as url:
        context = browser.new_context()
        page = context.new_page()
        outside = []

        def local_only(route, request):
            if request.url.startswith(url) or request.url.startswith("data:"):
                return route.continue_()
            outside.append(request.url)
            return route.abort()

        page.route("**/*", local_only)
        open_page(page, url, "book/04_adjoint_equation")
        typeset = page.evaluate("() => document.querySelectorAll('mjx-container').length")
        errors = page.evaluate("() => document.querySelectorAll('mjx-merror').length")
        context.close()
    assert typeset > 20 and errors == 0
    assert not any("mathjax" in u for u in outside), outside
