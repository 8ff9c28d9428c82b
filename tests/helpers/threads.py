"""A module fixture that runs a test file's torch work on one thread.

Small training steps run fastest on one thread, and they share a busy 2-core machine
better. Use it with `pytestmark = pytest.mark.usefixtures("one_thread")` after
importing it into the test module.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
