"""Fixtures shared by several test modules (plain helpers are in helpers.py)."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch

from helpers import FASHION_MNIST_MISSING, have_fashion_mnist


@pytest.fixture(scope="module")
def fashion() -> None:
    """Skip the test when Fashion-MNIST is not installed."""
    if not have_fashion_mnist():
        pytest.skip(FASHION_MNIST_MISSING)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module of many small ops: on a loaded 2-core machine more only oversubscribe.

    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
