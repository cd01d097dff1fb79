"""Shared fixtures: real data through the project's loaders, and one trained digits model.

Tests that read the shared MNIST / CIFAR-10 files take ``data_root``: without ``POISONLAB_DATA`` they are
skipped locally with a message naming the variable; with ``POISONLAB_NO_SKIP=1`` (set by ``.ci/run``) any
skipped test fails the run instead, so CI never passes with the real-data tests silently left out.
"""

import os
from pathlib import Path

import pytest
import torch

# One thread: the models are small, and two threads on a shared 2-core machine stall each other several-fold.
torch.set_num_threads(int(os.environ.get("POISONLAB_TEST_THREADS", "1")))

NO_SKIP = os.environ.get("POISONLAB_NO_SKIP") == "1"

# The CUDA tests exist only where a CUDA device does: left out of collection elsewhere (not skipped, which
# POISONLAB_NO_SKIP would count as a failure).
collect_ignore = [] if torch.cuda.is_available() else ["test_gpu.py"]

# The fast lane (`make test-fast`, under a minute on 2 cores): unit, oracle (hand-computed metrics),
# bad-input, contract and architecture tests; `make test` (what CI runs) adds the trained-model effect tests.
FAST_MODULES = {
    "test_architecture.py", "test_bad_inputs_api.py", "test_bad_inputs_cli.py", "test_cli.py",
    "test_contract.py", "test_data.py", "test_first_order_expansion.py", "test_metrics.py", "test_report.py",
}  # fmt: skip


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in FAST_MODULES:
            item.add_marker(pytest.mark.fast)


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = os.environ.get("POISONLAB_DATA")
    if not root or not Path(root).is_dir():
        message = f"POISONLAB_DATA ({root!r}) is not the shared data folder: the real-data tests need it"
        if NO_SKIP:
            pytest.fail(message)
        pytest.skip(message)
    return Path(root)


@pytest.fixture(scope="session")
def digits_split():
    from poisonlab.data import load_digits, train_test_split

    return train_test_split(load_digits(), 0.25, seed=0)


def pytest_sessionfinish(session, exitstatus):
    """Under POISONLAB_NO_SKIP=1 a skipped test is a failure (CI must run everything)."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter is not None else 0
    if NO_SKIP and skipped and exitstatus == 0:
        print(f"\nPOISONLAB_NO_SKIP=1: {skipped} test(s) were skipped; failing the run")
        session.exitstatus = 1
