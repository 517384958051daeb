"""Shared fixtures for the helpers test suite.

- ``device``: every test that takes it runs once on ``"cpu"`` and once on ``"cuda"``; the CUDA
  case is skipped (reason "CUDA is not available") only when ``torch.cuda.is_available()`` is
  False.
- ``float64``: makes float64 the default dtype for the test that asks for it.
- Under CI (the environment variable ``CI`` set), a missing torchdiffeq fails the run instead of
  skipping the tests that compare with it.
- An autouse fixture gives every test the same random numbers (seed 0) and restores torch's
  global state afterwards (default dtype, grad mode, the RNG), so no test leaks state into
  the next.
"""
from __future__ import annotations

import os

import pytest
import torch

CUDA = torch.cuda.is_available()

if os.environ.get("CI"):
    # torchdiffeq is a pinned test dependency (requirements.txt); the modules that compare with it
    # skip where it is missing, which under CI would hide their coverage: there it fails the run
    try:
        import torchdiffeq  # noqa: F401
    except ModuleNotFoundError as error:
        raise pytest.UsageError(
            "CI is set but torchdiffeq, a test dependency pinned in requirements.txt, is not installed; "
            "install requirements.txt (./run test does)") from error

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not CUDA, reason="CUDA is not available")),
]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """A torch.device: "cpu", then "cuda" (skipped where CUDA is not available)."""
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _isolate_torch_state():
    """Seed the RNGs for each test and put torch's global settings back afterwards."""
    dtype = torch.get_default_dtype()
    grad_enabled = torch.is_grad_enabled()
    cuda_devices = list(range(torch.cuda.device_count())) if CUDA else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(0)
        yield
    torch.set_default_dtype(dtype)
    torch.set_grad_enabled(grad_enabled)


@pytest.fixture
def float64():
    """float64 as the default dtype for this test only (restored afterwards)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield torch.float64
    finally:
        torch.set_default_dtype(previous)
