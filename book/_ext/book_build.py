"""Three repairs to the book's build, loaded by ``_config.yml`` (``sphinx: local_extensions``).

1. The bibliography's style: entries labelled by author and year, as the text cites them.
2. Each inline script once per page (a Sphinx 7.4 slip that declared THEBE_JS_URL twice).
3. Notebook kernels over IPC, not TCP (ipykernel warned of unencrypted TCP at every notebook).

**1.** sphinxcontrib-bibtex cites in author–year form in the text ({cite:t} gives "Patel (2020)"), but
its default list style labels each entry with an alpha key such as "[HNorsettW93]", which a reader
cannot match to the citation. This extension registers the pybtex style ``authoryear``: pybtex's
``plain`` formatting (which prints each entry's URL and DOI), sorted by author, year and title,
with the label "Hairer et al. 1993" in place of the key. ``_config.yml`` selects it with
``bibtex_default_style: authoryear``.

**2.** An extension that registers an inline script (``app.add_js_file(None, body=...)``) after
the HTML builder has started, as sphinx-thebe and sphinx-togglebutton do, gets it written twice:
once as registered and once more when Sphinx 7.4's ``prepare_writing`` adds the registry's
scripts again under the file name ``''`` instead of ``None``, which it does not recognise as the
same script. Declaring ``const THEBE_JS_URL`` twice is a console error on every page. The page
handler below keeps the first of any scripts that differ only in that way.

**3.** myst-nb executes each notebook through nbclient, whose kernel manager connects to the
kernel over TCP on 127.0.0.1 unless told otherwise; ipykernel 7 then prints "Kernel is running
over TCP without encryption" once per notebook, a warning a reader building the book cannot act
on. jupyter_client's documented alternative is its ``transport = "ipc"`` setting (Unix domain
sockets in Jupyter's runtime directory, readable by the user alone), and neither myst-nb nor
nbclient passes configuration to the kernel manager, so this module sets that setting's default
where the build runs, on POSIX systems (IPC does not exist on Windows).
"""
from __future__ import annotations

import codecs
import os

import latexcodec  # noqa: F401  (registers the "ulatex" codec; pybtex depends on it)
from pybtex.plugin import register_plugin
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle


def _plain(text: str) -> str:
    """LaTeX markup of a name ({\\o}, braces) as plain text."""
    return codecs.decode(text, "ulatex").replace("{", "").replace("}", "")


class AuthorYearLabels(BaseLabelStyle):
    """Labels "Patel 2020", "Chen et al. 2018", "Dormand and Prince 1980"; a letter separates
    entries that would otherwise share a label."""

    def format_labels(self, sorted_entries):
        labels = [self.format_label(entry) for entry in sorted_entries]
        seen: dict[str, int] = {}
        for label in labels:
            seen[label] = seen.get(label, 0) + 1
        count: dict[str, int] = {}
        for label in labels:
            if seen[label] > 1:
                count[label] = count.get(label, 0) + 1
                yield f"{label}{'abcdefghijklmnopqrstuvwxyz'[count[label] - 1]}"
            else:
                yield label

    def format_label(self, entry) -> str:
        persons = entry.persons.get("author") or entry.persons.get("editor") or []
        names = [_plain(" ".join(p.prelast_names + p.last_names)) for p in persons]
        if not names:
            names = [_plain(entry.fields.get("title", entry.key)).split(":")[0]]
        if len(names) == 1:
            who = names[0]
        elif len(names) == 2:
            who = f"{names[0]} and {names[1]}"
        else:
            who = f"{names[0]} et al."
        return f"{who} {entry.fields.get('year', 'n.d.')}"


class AuthorYearStyle(PlainStyle):
    default_label_style = AuthorYearLabels
    default_sorting_style = "author_year_title"


def drop_duplicate_scripts(app, pagename, templatename, context, doctree):
    """Keep one of each script of the page, counting a file name None the same as ''."""
    scripts = context.get("script_files")
    if not isinstance(scripts, list):
        return
    seen, kept = set(), []
    for script in scripts:
        attributes = getattr(script, "attributes", {}) or {}
        key = (getattr(script, "filename", script) or "", getattr(script, "priority", 0),
               tuple(sorted(attributes.items())))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    scripts[:] = kept  # the builder's own list: it is restored from a copy before each page


def kernels_over_ipc() -> None:
    """Make jupyter_client start kernels on IPC transport unless configured otherwise.

    jupyter_client names the IPC sockets ``kernel-ipc-<n>`` relative to the current directory
    when it picks them before the connection file exists, which it does; myst-nb starts each
    kernel in its notebook's folder, not the build's, so kernel and client would look for the
    sockets in different places. The sockets are therefore placed by absolute path in Jupyter's
    runtime directory (private to the user), under a name unique to the kernel manager.
    """
    if os.name != "posix":
        return
    from jupyter_client.connect import ConnectionFileMixin
    from jupyter_core.paths import jupyter_runtime_dir

    original = ConnectionFileMixin._ip_default

    def ip_default(self) -> str:
        if self.transport != "ipc":
            return original(self)
        if self.connection_file:
            stem = os.path.splitext(os.path.basename(self.connection_file))[0]
        else:
            stem = f"kernel-{os.getpid()}-{id(self):x}"
        runtime = jupyter_runtime_dir()
        os.makedirs(runtime, mode=0o700, exist_ok=True)
        return os.path.join(runtime, f"{stem}-ipc")

    ConnectionFileMixin._ip_default = ip_default
    classes = [ConnectionFileMixin]
    while classes:  # traitlets caches each class's default generators when it is created
        cls = classes.pop()
        generators = cls.__dict__.get("_all_trait_default_generators")
        if generators is not None and "ip" in generators:
            generators["ip"] = ip_default
        classes.extend(cls.__subclasses__())
    ConnectionFileMixin.class_traits()["transport"].default_value = "ipc"


def setup(app):
    register_plugin("pybtex.style.labels", "authoryear", AuthorYearLabels)
    register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)
    app.connect("html-page-context", drop_duplicate_scripts)
    kernels_over_ipc()
    return {"parallel_read_safe": True, "parallel_write_safe": True}
