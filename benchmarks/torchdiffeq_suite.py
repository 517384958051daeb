"""Run torchdiffeq's own test suite, unchanged, with ``import torchdiffeq`` resolving to helpers.

    python benchmarks/torchdiffeq_suite.py PATH/TO/torchdiffeq/tests [--real] [--show-failures N]

PATH is the ``tests`` folder of a torchdiffeq checkout (the suite matching the installed
torchdiffeq 0.2.5 is at its "upd version" commit, a88aac5). A temporary package named
``torchdiffeq`` that re-exports helpers' API is put first on ``sys.path``, so the suite's
``torchdiffeq.odeint(...)`` calls helpers; ``--real`` runs it against torchdiffeq itself, for
the baseline. Each subtest counts as one case (a test without subtests is one case). Cases that
use the Adams methods or ``scipy_solver``, which helpers leaves out on purpose, are counted
apart. Needs scipy (benchmarks/requirements-torchdiffeq-suite.txt).
"""
from __future__ import annotations

import argparse
import collections
import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap

SHIM = '''\
"""torchdiffeq's names, answered by helpers (made by benchmarks/torchdiffeq_suite.py)."""
import helpers
from helpers import odeint, odeint_adjoint
odeint_event = getattr(helpers, "odeint_event", None)
odeint_dense = getattr(helpers, "odeint_dense", None)
__version__ = "helpers"
'''

OUT_OF_SCOPE = ("adams", "scipy")

RUNNER = r'''
import collections, json, sys, time, unittest, warnings
warnings.simplefilter("ignore")
sys.argv = sys.argv[:1]
import run_all  # noqa: F401  (the suite's own entry point imports every test module)

records = []

class Result(unittest.TestResult):
    def startTest(self, test):
        super().startTest(test)
        self._had_sub = False
        self._t0 = time.time()
    def addSubTest(self, test, subtest, outcome):
        super().addSubTest(test, subtest, outcome)
        self._had_sub = True
        params = {k: str(v) for k, v in getattr(subtest, "params", {}).items()}
        records.append((test.id(), params, "pass" if outcome is None else "fail",
                        "" if outcome is None else self._exc_info_to_string(outcome, test)[-1500:]))
    def addSuccess(self, test):
        super().addSuccess(test)
        if not self._had_sub:
            records.append((test.id(), {}, "pass", ""))
    def addFailure(self, test, err):
        super().addFailure(test, err)
        records.append((test.id(), {}, "fail", self._exc_info_to_string(err, test)[-1500:]))
    def addError(self, test, err):
        super().addError(test, err)
        records.append((test.id(), {}, "fail", self._exc_info_to_string(err, test)[-1500:]))
    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        records.append((test.id(), {}, "skip", reason))

suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules["run_all"])
suite.run(Result())
json.dump(records, open(sys.argv[0] + ".json", "w"))
'''


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tests", type=pathlib.Path, help="the tests folder of a torchdiffeq checkout")
    parser.add_argument("--real", action="store_true", help="run against torchdiffeq itself")
    parser.add_argument("--show-failures", type=int, default=5, metavar="N")
    args = parser.parse_args(argv)
    import json

    tests = args.tests.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        path = [str(tests)]
        if not args.real:
            (tmp / "torchdiffeq").mkdir()
            (tmp / "torchdiffeq" / "__init__.py").write_text(SHIM)
            path.insert(0, str(tmp))
        runner = tmp / "runner.py"
        runner.write_text(RUNNER)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path + [os.environ.get("PYTHONPATH", "")]))
        subprocess.run([sys.executable, str(runner)], cwd=tests, env=env, check=False)
        records = json.loads((tmp / "runner.py.json").read_text())

    def out_of_scope(test_id, params):
        text = (test_id + " " + " ".join(params.values())).lower()
        return any(word in text for word in OUT_OF_SCOPE)

    counts = collections.Counter()
    failures = collections.defaultdict(list)
    for test_id, params, outcome, detail in records:
        scope = "out of scope" if out_of_scope(test_id, params) else "in scope"
        counts[scope, outcome] += 1
        if outcome == "fail" and scope == "in scope":
            failures[test_id.split(".")[-2] + "." + test_id.split(".")[-1]].append((params, detail))
    who = "torchdiffeq itself" if args.real else "helpers (import swapped)"
    total = sum(counts.values())
    passed = counts["in scope", "pass"] + counts["out of scope", "pass"]
    print(f"torchdiffeq's suite against {who}: {passed} of {total} cases pass")
    for scope in ("in scope", "out of scope"):
        n = sum(v for (s, _), v in counts.items() if s == scope)
        print(f"  {scope:13s}: {counts[scope, 'pass']:4d} pass, {counts[scope, 'fail']:4d} fail, "
              f"{counts[scope, 'skip']:4d} skip of {n}")
    in_scope = sum(v for (s, _), v in counts.items() if s == "in scope")
    if in_scope:
        print(f"  in-scope pass rate: {100 * counts['in scope', 'pass'] / in_scope:.1f}%")
    print("failing in-scope tests (cases):")
    for name, cases in sorted(failures.items(), key=lambda kv: -len(kv[1])):
        print(f"  {name}: {len(cases)}")
        for params, detail in cases[: args.show_failures]:
            last = [line for line in detail.strip().splitlines() if line.strip()][-1:] or [""]
            print(textwrap.indent(f"{params} -> {last[0][:200]}", "      "))
    return 0


if __name__ == "__main__":
    sys.exit(main())
