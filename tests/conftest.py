"""Test configuration: hypothesis profiles, Triton's interpreter where there is no GPU, and
the ``step_path`` fixture (shared helpers are in ``helpers.py``)."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

# CI and `make test` draw the same examples every run (a failure is reproducible, never a
# flake); HYPOTHESIS_PROFILE=explore draws new ones, ten times as many (`make fuzz`: see
# helpers.examples).
settings.register_profile("repeatable", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

if not torch.cuda.is_available():
    # Before triton is imported: its kernels then run on CPU tensors, so that CI (no GPU)
    # checks them.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from helpers import STEP_PATHS, use_step_path  # noqa: E402


@pytest.fixture(params=STEP_PATHS)
def step_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test once per way a step can run (``helpers.STEP_PATHS``)."""
    use_step_path(monkeypatch, request.param)
    return request.param
