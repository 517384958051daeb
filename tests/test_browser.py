"""The rendered book, opened in headless Chromium the way a reader meets it.

Serves ``_build/html`` (built by ``./run test`` before pytest runs) on 127.0.0.1 and opens every page.
The MathJax CDN is unreachable here, so requests for it are answered from a local copy of MathJax 3
(``node_modules/mathjax``, installed by ``./run test``); the published book keeps the CDN address.
Screenshots of every page land in ``_build/screenshots/``.

At a reader's 1280 × 900 window every page is measured: each display equation's typeset width
against its box, each code and output block's content against its box, the prose (everything
outside typeset maths and code) for TeX that never became maths, the page-contents sidebar for
raw labels and TeX, and the console for errors and warnings. ``BOOK_HTML`` points the test at
another build directory.
"""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from build_pdf import serve  # noqa: E402  (the PDF build serves its page the same way)

HTML = pathlib.Path(os.environ.get("BOOK_HTML", ROOT / "_build" / "html"))
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

# Console messages that may not fail a page, each with the reason it cannot be fixed in the book.
# None is left: the theme's "Got invalid theme mode" error had its cause in the configuration
# (html_context.default_mode, now set in _config.yml), and the duplicate THEBE_JS_URL declaration
# is removed at build time by book/_ext/book_build.py. Add an entry only with its reason.
CONSOLE_EXEMPT: dict[str, str] = {}
NOTEBOOK_PAGES = [p for p in PAGES if (ROOT / f"{p}.ipynb").exists()]


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

    def console(msg):
        if msg.type in ("error", "warning"):
            page.errors.append(f"{msg.type}: {msg.text}")

    page.on("console", console)
    page.on("pageerror", lambda exc: page.errors.append(f"pageerror: {exc}"))
    page.route("**/*", lambda route, request: _serve_locally(route, request, base_url))
    yield page
    context.close()


def open_page(page, base_url, name):
    page.goto(f"{base_url}{name}.html", wait_until="load")
    if page.evaluate("() => !!document.querySelector('script[src*=\"mathjax\"]')"):
        page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=30000)
        page.evaluate("() => MathJax.startup.promise")


# Measures one rendered page. Widths are CSS pixels; 1 px of slack absorbs sub-pixel rounding.
MEASURE = r"""() => {
  const article = document.querySelector('article.bd-article') || document.body;
  const tex = (el) => {
    try {
      const items = MathJax.startup.document.getMathItemsWithin(el);
      if (items.length) return items[0].math;
    } catch (e) {}
    return el.textContent;
  };
  const short = (text) => text.replace(/\s+/g, ' ').trim().slice(0, 60);
  const equations = [];
  for (const c of article.querySelectorAll('mjx-container[display="true"]')) {
    const box = c.closest('div.math') || c.parentElement;
    const math = c.querySelector('mjx-math');
    const width = math ? math.getBoundingClientRect().width : c.scrollWidth;
    const room = Math.min(c.clientWidth, box.clientWidth);
    if (width > room + 1 || c.scrollWidth > c.clientWidth + 1) {
      const labelled = c.closest('div.math[id^="equation-"]');
      const label = labelled ? labelled.id.replace(/^equation-/, '') : short(tex(c));
      equations.push({label, width: Math.round(width), box: Math.round(room)});
    }
  }
  const blocks = [];
  const seen = new Set();
  const boxes = article.querySelectorAll(
    'pre, .cell_output .output, .cell_output table, table.table, table.docutils');
  for (const el of boxes) {
    if (seen.has(el) || el.closest('mjx-container')) continue;
    seen.add(el);
    const host = el.tagName === 'TABLE' ? el.parentElement : el;
    const width = el.tagName === 'TABLE' ? el.getBoundingClientRect().width : el.scrollWidth;
    if (width > host.clientWidth + 1 && host.clientWidth > 0) {
      const lines = el.textContent.split('\n');
      const longest = lines.reduce((a, b) => (b.length > a.length ? b : a), '');
      const kind = el.tagName === 'PRE'
        ? (el.closest('.cell_output') ? 'output' : 'code')
        : (el.tagName === 'TABLE' ? 'table' : 'output');
      blocks.push({kind, label: short(longest), width: Math.round(width),
                   box: Math.round(host.clientWidth)});
    }
  }
  const copy = article.cloneNode(true);
  copy.querySelectorAll('mjx-container, pre, code, .highlight, script, style, noscript')
      .forEach(e => e.remove());
  const prose = copy.textContent;
  const toc = document.querySelector('.bd-toc, .page-toc');
  const labels = Array.from(article.querySelectorAll('div.math[id^="equation-"]'))
      .map(e => e.id.replace(/^equation-/, ''));
  return {equations, blocks, prose, toc: toc ? toc.textContent : '', labels};
}"""

TEX = [
    (re.compile(r"\\[A-Za-z]+"), "a TeX command"),
    (re.compile(r"\$\$"), "raw $$"),
    (re.compile(r"\$[^$\n]{1,200}?\$"), "a $...$ pair left as text"),
]


def tex_leaks(text):
    """Each piece of TeX found in ``text``, with a little context."""
    found = []
    for pattern, what in TEX:
        for m in pattern.finditer(text):
            context = text[max(0, m.start() - 25):m.end() + 25].replace("\n", " ")
            found.append(f"{what}: ...{context}...")
    return found


def page_problems(page, name):
    """Every overflow, TeX leak and raw sidebar label of an opened page, one line each."""
    m = page.evaluate(MEASURE)
    problems = [f"{name} | equation {e['label']} | {e['width']} px in {e['box']} px"
                for e in m["equations"]]
    problems += [f"{name} | {b['kind']} block '{b['label']}' | {b['width']} px in {b['box']} px"
                 for b in m["blocks"]]
    problems += [f"{name} | prose | {leak}" for leak in tex_leaks(m["prose"])]
    toc = m["toc"]
    problems += [f"{name} | page contents | {leak}" for leak in tex_leaks(toc)]
    problems += [f"{name} | page contents | raw label {label!r}" for label in m["labels"]
                 if re.search(rf"(?<![\w-]){re.escape(label)}(?![\w-])", toc)]
    problems += [f"{name} | page contents | raw role {role!r}"
                 for role in re.findall(r"\{(?:eq|ref|doc|numref)\}", toc)]
    return problems


def test_tex_leaks_are_found():
    """The prose check itself: it finds what it must and passes plain prose."""
    assert tex_leaks("the adjoint \\lambda(t) solves") and tex_leaks("raw $$ here")
    assert tex_leaks("a pair $x + y$ left") and tex_leaks("\\frac{a}{b}")
    assert tex_leaks("Plain prose, with (4.2) and a path like book/notation.md.") == []


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
    broken = page.evaluate("""() => Array.from(document.images)
        .filter(img => !(img.complete && img.naturalWidth > 0)).map(img => img.src)""")
    assert broken == [], f"broken images: {broken}"
    problems = page_problems(page, name)
    problems += [f"{name} | console | {e}" for e in page.errors
                 if not any(text in e for text in CONSOLE_EXEMPT)]
    if problems:
        pytest.fail(f"{len(problems)} problems at a 1280-px window:\n" + "\n".join(problems),
                    pytrace=False)


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


# Hover previews (sphinx-tippy, configured in _config.yml and book/_ext/hover_previews.py): a
# reference to an equation, a citation or a glossary term shows its target in a tip.
def _hover_tip(page, link):
    """Hover ``link`` (a locator) and return the tip it opens, once any maths in it is typeset."""
    assert link.count() > 0, "the link to hover is not on the page"
    link.first.scroll_into_view_if_needed()
    link.first.hover()
    tip = page.locator(".tippy-box").first
    tip.wait_for(state="visible", timeout=10000)
    page.wait_for_function("""() => {
        const tip = document.querySelector('.tippy-box');
        return tip && getComputedStyle(tip).opacity === '1'
            && !/\\\\\\(|\\\\\\[|\\$\\$/.test(tip.textContent); }""", timeout=20000)
    return tip


def _words(text):
    return " ".join(text.split())


def test_equation_reference_to_an_earlier_chapter_shows_it_typeset(page, base_url):
    """Chapter 9 cites the adjoint equation (4.2) of chapter 4: hovering shows it, typeset."""
    open_page(page, base_url, "book/09_time_gradients")
    link = page.locator('article.bd-article a[href="04_adjoint_equation.html#equation-ch4-adjoint"]')
    assert link.first.inner_text().strip() == "(4.2)"
    tip = _hover_tip(page, link)
    assert tip.locator("mjx-container").count() == 1, tip.inner_html()[:300]
    assert tip.locator("mjx-merror").count() == 0
    text = tip.text_content()
    assert "\\frac" not in text and "$$" not in text and "\\[" not in text, text[:200]
    # the tip shows chapter 4's equation, at the page's size (a tip typeset before it was on the
    # page came out at about 70%)
    source = re.search(r'id="equation-ch4-adjoint">.*?\\\[(.*?)\\\]</div>',
                       (HTML / "book" / "04_adjoint_equation.html").read_text(), re.S).group(1)
    shown = page.evaluate("""() => MathJax.startup.document
        .getMathItemsWithin(document.querySelector('.tippy-box'))[0].math""")
    assert _words(shown) == _words(source)
    sizes = page.evaluate("""() => [document.querySelector('.tippy-box mjx-container'),
        document.querySelector('article.bd-article mjx-container[display="true"]')]
        .map(e => parseFloat(getComputedStyle(e).fontSize))""")
    assert sizes[0] > 0.8 * sizes[1], f"the tip's formula is set at {sizes[0]} px, the page's at {sizes[1]} px"
    box = tip.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 1280, box
    page.screenshot(path=str(SHOTS / "hover-equation.png"))
    assert page.errors == [], page.errors


def test_citation_shows_the_reference_on_hover(page, base_url):
    import html
    open_page(page, base_url, "book/03_lagrangian")
    link = page.locator('article.bd-article a[href^="bibliography.html#"]').first
    target = link.get_attribute("href").split("#")[1]
    entry = re.search(rf'<div class="citation" id="{target}"[^>]*>(.*?)</div>',
                      (HTML / "book" / "bibliography.html").read_text(), re.S).group(1)
    entry = re.sub(r'<span class="label">.*?</span>\s*</span>', "", entry, flags=re.S)
    entry = _words(html.unescape(re.sub(r"<[^>]+>", "", entry)))
    tip = _hover_tip(page, link)
    assert len(entry) > 40 and entry in _words(tip.text_content()), (entry, tip.text_content())
    page.screenshot(path=str(SHOTS / "hover-citation.png"))
    assert page.errors == [], page.errors


GLOSSARY_TERMS = ["adjoint", "costate", "Lagrange multiplier", "vector–Jacobian product",
                  "augmented state", "seminorm", "discretise-then-optimise",
                  "optimise-then-discretise", "NFE", "dense output", "checkpoint"]


def test_glossary_defines_the_terms_and_chapters_link_to_it(page, base_url):
    open_page(page, base_url, "book/glossary")
    terms = page.evaluate("""() => Array.from(document.querySelectorAll('article dl.glossary dt'))
        .map(dt => { const c = dt.cloneNode(true);
                     c.querySelectorAll('.headerlink').forEach(a => a.remove());
                     return c.textContent.trim(); })""")
    missing = [t for t in GLOSSARY_TERMS if t not in terms]
    assert missing == [], f"not in the glossary: {missing} (it has {terms})"
    assert page.errors == [], page.errors
    # chapter 4's link on "adjoint equation" shows the definition on hover and leads to it
    open_page(page, base_url, "book/04_adjoint_equation")
    link = page.locator('article.bd-article a[href="glossary.html#term-adjoint-equation"]')
    tip = _hover_tip(page, link)
    assert "adjoint equation" in tip.text_content() and tip.locator("mjx-container").count() > 0
    page.mouse.move(0, 0)
    link.first.click()
    page.wait_for_url(re.compile(r"glossary\.html#term-adjoint-equation$"), timeout=10000)
    shown = page.evaluate("() => document.getElementById('term-adjoint-equation').firstChild.textContent")
    assert shown.strip() == "adjoint equation"
    assert page.errors == [], page.errors


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
