#!/usr/bin/env bash
# Where `./run` takes torch from (README, "Prerequisites"). Prints one word for the Python given:
#   installed  torch of requirements.txt's version is already installed there: pip leaves it be
#   local      a wheel of that version is at hand without the network (pip's find-links or a
#              local index): `./run` installs it with --no-index, so no index host is asked
#   cpu-index  Linux without nvidia-smi: add PyTorch's CPU index as an extra index (PyPI's Linux
#              torch is the CUDA build, with several GB of CUDA libraries)
#   default    anything else (macOS and Windows, whose PyPI torch is the CPU build; a machine with
#              an NVIDIA GPU): pip's indexes as configured
# The first that applies wins; the reason goes to stderr.
#   usage: scripts/torch_source.sh PYTHON
# To see the choice another machine would make (tests/test_torch_source.py does):
#   TORCH_SOURCE_INSTALLED=VERSION  the installed torch's version instead of asking PYTHON ("" none)
#   TORCH_SOURCE_NO_LOCAL=1         as if no wheel were at hand
#   TORCH_SOURCE_UNAME=NAME         the system's name instead of `uname -s` (Linux, Darwin, ...)
#   TORCH_SOURCE_NVIDIA_SMI=CMD     the command whose presence means an NVIDIA GPU (nvidia-smi)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${1:?usage: scripts/torch_source.sh PYTHON}
pin=$(sed -n 's/^torch==\([^ ;#]*\).*/\1/p' requirements.txt)
if [ -z "$pin" ]; then
  echo "requirements.txt pins no torch==VERSION" >&2
  exit 2
fi

if [ -n "${TORCH_SOURCE_INSTALLED+set}" ]; then
  installed=$TORCH_SOURCE_INSTALLED
else
  installed=$("$python" -c "import importlib.metadata as m; print(m.version('torch'))" 2>/dev/null || true)
fi
if [ -n "$installed" ] && [ "${installed%%+*}" = "$pin" ]; then
  echo "torch $installed is installed" >&2
  echo installed
elif [ "${TORCH_SOURCE_NO_LOCAL:-}" != 1 ] &&
    "$python" -m pip install --dry-run --ignore-installed --no-index --no-deps -q "torch==$pin" >/dev/null 2>&1; then
  echo "a torch $pin wheel is at hand without the network" >&2
  echo local
elif [ "${TORCH_SOURCE_UNAME:-$(uname -s)}" = Linux ] &&
    ! command -v "${TORCH_SOURCE_NVIDIA_SMI:-nvidia-smi}" >/dev/null 2>&1; then
  echo "Linux without an NVIDIA GPU: torch $pin's CPU build, from PyTorch's CPU index" >&2
  echo cpu-index
else
  echo "torch $pin from pip's indexes as configured" >&2
  echo default
fi
