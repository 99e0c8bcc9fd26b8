"""Shared fixtures: a tiny synthetic RecFlow dataset generated once per test session."""
from __future__ import annotations

import os
import shutil

import pytest

from deep_components.data.synthetic import generate, preset_params


def pytest_configure(config):
    """Under pytest-xdist (``-n``, the default) each worker is one of several processes sharing
    the cores: it and the commands it starts use one thread each, so the workers never
    oversubscribe the machine (an OpenMP team waiting on a descheduled thread is slower than
    one thread)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """A read-only-by-convention tiny dataset (seed 0). Copy it before modifying files."""
    root = tmp_path_factory.mktemp("tiny")
    generate(root, preset_params("tiny"), seed=0, preset="tiny", verbose=False)
    return root


@pytest.fixture
def tiny_copy(tiny_root, tmp_path):
    """A private copy of the tiny dataset that a test may break."""
    dst = tmp_path / "data"
    shutil.copytree(tiny_root, dst, ignore=shutil.ignore_patterns(".lcron_cache"))
    return dst


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A run with --threads changes torch's global thread count; give the next test the default
    back (some methods' results depend on the summation order that the thread count sets)."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
