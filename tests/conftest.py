"""Settings shared by every test file."""
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Every test uses tiny models, whose matmuls gain nothing from a second thread; and on a busy
    2-core machine two OpenMP threads waiting for each other were measured up to 30x slower than one.
    Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
