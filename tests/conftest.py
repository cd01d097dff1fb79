"""Shared fixtures: real data through the project's loaders, and one trained digits model."""

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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
