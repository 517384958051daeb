#!/usr/bin/env bash
# Colab's versions, checked: a fresh virtual environment with Colab's torch and numpy (by default
# torch 2.9.0 and numpy 2.0.2, Colab's runtime in November 2026, on Python 3.12), helpers installed
# from a copy of the committed tree as a package (`pip install .`, not editable), then
#   1. the unit tests (tests/ without the browser, PDF and compiled-mode tests),
#   2. the compiled-mode tests (tests/test_compiled.py),
#   3. every notebook in _toc.yml under nbval,
# all against the installed package. The summary (versions, where helpers was imported from, pass
# and fail counts, times) goes to benchmarks/results/colab_env_check.txt. CI cannot download that
# torch on every run: run this by hand when requirements.txt or pyproject.toml change, and set
# pyproject.toml's lower bounds to the oldest versions it passed on.
#
#   bash scripts/check_colab_env.sh            # Colab's versions
#   TORCH_VERSION=2.6.0 NUMPY_VERSION=1.26.4 OUT=benchmarks/results/colab_env_check_torch2.6.txt \
#       bash scripts/check_colab_env.sh        # another pair
#
# PYTHON picks the interpreter (default: python3.12, Colab's, where one is found, else python3);
# WORK a folder to reuse between runs (default: a new temporary one). PyPI's Linux torch is the
# CUDA build with several GB of nvidia-* libraries: torch is installed without its dependencies
# first, and the full set only if `import torch` fails without them.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
TORCH_VERSION=${TORCH_VERSION:-2.9.0}
NUMPY_VERSION=${NUMPY_VERSION:-2.0.2}
OUT=${OUT:-benchmarks/results/colab_env_check.txt}
WORK=${WORK:-$(mktemp -d /tmp/colab-env-check.XXXXXX)}
mkdir -p "$WORK"
LOG=$WORK/log.txt
: >"$LOG"

pick_python() {
  local candidate
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  for candidate in python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12 python3; do
    if "$candidate" -c "import sys; assert sys.version_info >= (3, 11)" >/dev/null 2>&1; then
      echo "$candidate"; return
    fi
  done
  echo "no Python 3.11+ found; set PYTHON" >&2; exit 2
}

say() { echo "$*" | tee -a "$REPO/$OUT.tmp"; }
now() { date +%s; }
# the last line of a pytest run ("N passed, M skipped in Xs"), without the ===== around it
summary() { grep -E '(passed|failed|error|skipped|no tests ran)' "$1" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//'; }

: >"$REPO/$OUT.tmp"
PY=$(pick_python) || exit 2
SRC=$WORK/src
VENV=$SRC/.venv   # where ./run expects it: tests/test_exercises.py starts `./run lab` in the copy

say "Colab-environment check (scripts/check_colab_env.sh), $(date -u '+%Y-%m-%d %H:%M UTC')"
say "commit: $(git rev-parse --short HEAD) ($(git log -1 --format=%s | cut -c1-70))"
say "machine: $(uname -sm), $(nproc) CPU cores, no GPU used"
say "python: $("$PY" -c 'import sys; print(sys.version.split()[0])') ($PY)"

# the committed tree, copied: helpers is installed from it and the tests run in it, so nothing
# imports the checkout's helpers
t0=$(now)
rm -rf "$SRC" && mkdir -p "$SRC"
git archive HEAD | tar -x -C "$SRC"
"$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install -q --upgrade pip setuptools wheel >>"$LOG" 2>&1
# requirements.txt's other pins, less torch and numpy (Colab's are the point) and the book-build,
# browser and benchmark packages the checks below do not use
grep -E '^[A-Za-z]' requirements.txt | grep -v -E '^(torch|numpy|jupyter-book|sphinx-|playwright|torchdiffeq)\b' \
  >"$WORK/others.txt"
# torch's own dependencies, less the nvidia-* libraries and triton (the CPU needs neither)
TORCH_DEPS=(filelock "typing-extensions>=4.10.0" "sympy>=1.13.3" "networkx>=2.5.1" jinja2 "fsspec>=0.8.5")
if ! "${PIP[@]}" install -q "numpy==$NUMPY_VERSION" -r "$WORK/others.txt" scipy "${TORCH_DEPS[@]}" \
    >>"$LOG" 2>&1; then
  say "FAILED to install the test dependencies (see $LOG)"; mv "$REPO/$OUT.tmp" "$REPO/$OUT"; exit 1
fi
mkdir -p "$WORK/wheels"
"${PIP[@]}" download -q --no-deps "torch==$TORCH_VERSION" -d "$WORK/wheels" >>"$LOG" 2>&1
WHEEL=$(ls "$WORK"/wheels/torch-"$TORCH_VERSION"*.whl 2>/dev/null | head -1)
"${PIP[@]}" install -q --no-deps "$WHEEL" >>"$LOG" 2>&1
if "$VENV/bin/python" -c "import torch; torch.ones(2) @ torch.ones(2)" >>"$LOG" 2>&1; then
  TORCH_HOW="without its nvidia-* dependencies (pip install --no-deps): import torch works without them"
else
  "${PIP[@]}" install -q "torch==$TORCH_VERSION" >>"$LOG" 2>&1
  TORCH_HOW="with all its dependencies (import torch failed without the nvidia-* libraries)"
fi
# test dependency only; --no-deps so that pip does not reach for torch's nvidia-* dependencies
"${PIP[@]}" install -q --no-deps torchdiffeq=="$(sed -n 's/^torchdiffeq==//p' requirements.txt)" >>"$LOG" 2>&1
# helpers, not editable, from the copy (its dependencies are installed above)
"${PIP[@]}" install -q --no-deps "$SRC" >>"$LOG" 2>&1
rm -rf "$SRC/build" "$SRC"/*.egg-info
t1=$(now)

say "torch wheel: $(basename "$WHEEL"), $(du -m "$WHEEL" | cut -f1) MB, installed $TORCH_HOW"
say "environment: $(du -sm "$VENV" | cut -f1) MB in all; built in $((t1 - t0)) s"
say "installed: $("$VENV/bin/python" - <<'EOF'
import importlib.metadata as m
names = ["torch", "numpy", "matplotlib", "tqdm", "scipy", "torchdiffeq", "pytest", "nbval",
         "ipykernel", "helpers"]
print(", ".join(f"{n} {m.version(n)}" for n in names))
EOF
)"
HELPERS_FILE=$(cd "$WORK" && "$VENV/bin/python" -c "import helpers; print(helpers.__file__)")
say "helpers imported from: ${HELPERS_FILE#"$WORK"/}"
case "$HELPERS_FILE" in
  */site-packages/helpers/__init__.py) ;;
  *) say "FAILED: helpers is not the installed package"; mv "$REPO/$OUT.tmp" "$REPO/$OUT"; exit 1 ;;
esac
say "nbval kernel: --current-env, i.e. $("$VENV/bin/python" -c 'import sys; print(sys.executable)' | sed "s|$WORK/||")"

# a pytest plugin that stops every run below unless helpers comes from site-packages (the
# notebooks' kernels import the same package: --current-env, and no helpers/ beside book/)
mkdir -p "$WORK/plugin"
cat >"$WORK/plugin/installed_helpers.py" <<'EOF'
import pytest


def pytest_sessionstart(session):
    import helpers
    if "site-packages" not in helpers.__file__:
        raise pytest.UsageError(f"helpers comes from {helpers.__file__}, not the installed package")


def pytest_report_header(config):  # shown without -q
    import helpers
    return f"helpers: {helpers.__file__}"
EOF

cd "$SRC"
export PYTHONPATH=$WORK/plugin MPLBACKEND=Agg PYTHONDONTWRITEBYTECODE=1
PYTEST=("$VENV/bin/python" -P -m pytest -p installed_helpers -p no:cacheprovider -q -rfE)
status=0

run_phase() {  # name, log file, pytest arguments...
  local name=$1 log=$2 start end rc
  shift 2
  start=$(now)
  timeout 3600 nice -n 10 "${PYTEST[@]}" "$@" >"$log" 2>&1
  rc=$?
  end=$(now)
  say "$name: $(summary "$log") ($((end - start)) s wall)"
  grep -E '^(FAILED|ERROR) ' "$log" | sed 's/^/    /' | tee -a "$REPO/$OUT.tmp"
  [ "$rc" -eq 0 ] || status=1
}

say ""
IGNORE=(--ignore=tests/test_browser.py --ignore=tests/test_compiled.py)
for f in tests/test_pdf*.py; do [ -e "$f" ] && IGNORE+=("--ignore=$f"); done
run_phase "unit tests (tests/, less ${IGNORE[*]#--ignore=tests/})" "$WORK/unit.txt" tests "${IGNORE[@]}"
run_phase "compiled-mode tests (tests/test_compiled.py)" "$WORK/compiled.txt" tests/test_compiled.py

NOTEBOOKS=$("$VENV/bin/python" - <<'EOF'
import pathlib, yaml
toc = yaml.safe_load(open("_toc.yml"))
files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
print(" ".join(f + ".ipynb" for f in files if pathlib.Path(f + ".ipynb").exists()))
EOF
)
nb_start=$(now)
nb_pass=0 nb_fail=0
say "notebooks under nbval (--nbval-lax --current-env), one pytest run each:"
for nb in $NOTEBOOKS; do
  log=$WORK/nb_$(basename "$nb" .ipynb).txt
  start=$(now)
  timeout 1200 nice -n 10 "${PYTEST[@]}" --nbval-lax --current-env --nbval-cell-timeout=300 "$nb" >"$log" 2>&1
  rc=$?
  end=$(now)
  if [ "$rc" -eq 0 ]; then nb_pass=$((nb_pass + 1)); else nb_fail=$((nb_fail + 1)); status=1; fi
  say "  $nb: $(summary "$log") ($((end - start)) s wall)"
  grep -E '^(FAILED|ERROR) ' "$log" | sed 's/^/      /' | tee -a "$REPO/$OUT.tmp"
done
say "notebooks: $nb_pass passed, $nb_fail failed, of $(echo $NOTEBOOKS | wc -w) ($(($(now) - nb_start)) s wall)"
say ""
if [ "$status" -eq 0 ]; then say "RESULT: all passed"; else say "RESULT: FAILURES above (logs in $WORK)"; fi
cd "$REPO" && mv "$OUT.tmp" "$OUT"
echo "written to $OUT; logs in $WORK"
exit "$status"
