"""The GitHub Actions workflow that publishes the book: valid YAML with the jobs and steps it relies on."""
from __future__ import annotations

import pathlib

import yaml

WORKFLOW = pathlib.Path(__file__).resolve().parent.parent / ".github" / "workflows" / "book.yml"


def load():
    wf = yaml.safe_load(WORKFLOW.read_text())
    # YAML 1.1 reads the bare key `on` as True
    wf["on"] = wf.pop(True, wf.get("on"))
    return wf


def run_lines(job):
    return "\n".join(step.get("run", "") for step in job["steps"])


def uses(job):
    return [step.get("uses", "").split("@")[0] for step in job["steps"]]


def test_triggers():
    on = load()["on"]
    assert on["push"]["branches"] == ["main"]
    assert "pull_request" in on


def test_build_job_builds_with_warnings_as_errors_and_uploads_the_html():
    build = load()["jobs"]["build"]
    assert "pull_request" in build["if"]
    lines = run_lines(build)
    assert "pip install -r requirements.txt" in lines
    assert lines.index("-r requirements.txt") < lines.index("install -e .")  # requirements first: they pin torch
    assert "jupyter-book build . -W" in lines
    artifact = next(s for s in build["steps"] if s.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert artifact["with"]["path"] == "_build/html"
    setup = next(s for s in build["steps"] if s.get("uses", "").startswith("actions/setup-python"))
    assert setup["with"]["python-version"] == "3.11"


def test_deploy_job_publishes_to_pages():
    wf = load()
    deploy = wf["jobs"]["deploy"]
    assert deploy["needs"] == "build"
    assert deploy["environment"]["name"] == "github-pages"
    assert "actions/deploy-pages" in uses(deploy)
    assert wf["permissions"]["pages"] == "write" and wf["permissions"]["id-token"] == "write"


def test_pull_requests_run_the_readme_test_command():
    test = load()["jobs"]["test"]
    assert "pull_request" in test["if"] and "!=" not in test["if"]
    assert "./run test" in run_lines(test)
    readme = (WORKFLOW.parents[2] / "README.md").read_text()
    assert "./run test" in readme


def test_torch_comes_from_the_cpu_index():
    # the default index named as such, the CPU index only as the extra one (torch's CPU build)
    env = load()["env"]
    assert env["PIP_EXTRA_INDEX_URL"].rstrip("/").endswith("download.pytorch.org/whl/cpu")
    assert env["PIP_INDEX_URL"].rstrip("/").endswith("/simple") and "pytorch" not in env["PIP_INDEX_URL"]


def test_pull_requests_install_what_the_tests_need_before_running_them():
    """The browser, PDF and compiled-mode tests fail without chromium, poppler and g++ (.ci/run
    installs them here; the runner gets them in a step before the test command)."""
    lines = run_lines(load()["jobs"]["test"])
    for needed in ("poppler-utils", "g++", "/usr/local/bin/chromium"):
        assert needed in lines
        assert lines.index(needed) < lines.index("./run test")
