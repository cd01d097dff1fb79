"""Shared fixtures: real data through the project's loaders, and one trained digits model."""

import os
from pathlib import Path

import pytest
import torch

# One thread: the models are small, and two threads on a shared 2-core machine stall each other several-fold.
torch.set_num_threads(int(os.environ.get("POISONLAB_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = os.environ.get("POISONLAB_DATA")
    if not root or not Path(root).is_dir():
        pytest.skip("POISONLAB_DATA is not set to the shared data folder")
    return Path(root)


@pytest.fixture(scope="session")
def digits_split():
    from poisonlab.data import load_digits, train_test_split

    return train_test_split(load_digits(), 0.25, seed=0)
