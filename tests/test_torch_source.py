"""scripts/torch_source.sh: where `./run` takes torch from, on this machine and on simulated ones.

The script's environment variables stand in for another machine (no torch installed, no wheel at
hand, macOS, an NVIDIA GPU); the "local" case is checked with a stand-in wheel in a folder given
to pip as its only find-links, with pip's configuration files switched off, so no index is asked.
"""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import zipfile

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "torch_source.sh"
PIN = re.search(r"^torch==(\S+)", (ROOT / "requirements.txt").read_text(), re.M).group(1)
NO_GPU = "no-such-command-nvidia-smi"


def source(python=sys.executable, **env):
    result = subprocess.run(["bash", str(SCRIPT), python], capture_output=True, text=True,
                            env={**os.environ, **env}, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_this_environment():
    # torch of the pinned version is installed here exactly when torch.__version__ says so
    expected = "installed" if torch.__version__.split("+")[0] == PIN else None
    got = source()
    assert (got == "installed") == (expected == "installed"), (got, torch.__version__, PIN)


def test_installed_torch_of_the_pinned_version_is_kept():
    assert source(TORCH_SOURCE_INSTALLED=f"{PIN}+cpu") == "installed"
    assert source(TORCH_SOURCE_INSTALLED=PIN) == "installed"


def test_linux_without_a_gpu_takes_the_cpu_index():
    assert source(TORCH_SOURCE_INSTALLED="", TORCH_SOURCE_NO_LOCAL="1", TORCH_SOURCE_UNAME="Linux",
                  TORCH_SOURCE_NVIDIA_SMI=NO_GPU) == "cpu-index"
    # another torch installed is no reason to skip the CPU index
    assert source(TORCH_SOURCE_INSTALLED="1.0.0", TORCH_SOURCE_NO_LOCAL="1", TORCH_SOURCE_UNAME="Linux",
                  TORCH_SOURCE_NVIDIA_SMI=NO_GPU) == "cpu-index"


@pytest.mark.parametrize("uname, smi", [("Linux", "true"), ("Darwin", NO_GPU), ("MINGW64_NT-10.0", NO_GPU)])
def test_a_gpu_macos_and_windows_use_the_configured_indexes(uname, smi):
    # `true` is a command that exists: it stands for nvidia-smi on a machine with a GPU
    assert source(TORCH_SOURCE_INSTALLED="", TORCH_SOURCE_NO_LOCAL="1", TORCH_SOURCE_UNAME=uname,
                  TORCH_SOURCE_NVIDIA_SMI=smi) == "default"


def stand_in_wheel(folder: pathlib.Path, version: str) -> pathlib.Path:
    # just enough of a wheel for pip to read its name and version (the script only resolves it)
    path = folder / f"torch-{version}-py3-none-any.whl"
    info = f"torch-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
        whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{info}/RECORD", "")
    return path


@pytest.mark.parametrize("wheel_version, expected", [(f"{PIN}+cpu", "local"), ("1.0.0", "cpu-index"), (None, "cpu-index")])
def test_a_wheel_at_hand_is_used_without_the_network(tmp_path, wheel_version, expected):
    if wheel_version:
        stand_in_wheel(tmp_path, wheel_version)
    env = dict(PIP_CONFIG_FILE=os.devnull, PIP_FIND_LINKS=str(tmp_path), PIP_DEFAULT_TIMEOUT="5",
               TORCH_SOURCE_INSTALLED="", TORCH_SOURCE_UNAME="Linux", TORCH_SOURCE_NVIDIA_SMI=NO_GPU)
    assert source(**env) == expected
    # the override says "no wheel at hand" even when there is one
    assert source(**env, TORCH_SOURCE_NO_LOCAL="1") == "cpu-index"


def test_run_installs_by_the_script():
    run = (ROOT / "run").read_text()
    install = run[run.index("install() {"):run.index("\n}\n", run.index("install() {"))]
    assert "scripts/torch_source.sh .venv/bin/python" in install
    assert "--no-index --no-deps" in install and "--extra-index-url" in install
    assert "download.pytorch.org/whl/cpu" in install
