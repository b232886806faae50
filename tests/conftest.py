"""Run every Triton kernel on CUDA when a GPU exists, else through the Triton interpreter on the CPU.

TRITON_INTERPRET must be set before Triton is first imported, so this happens at the top of conftest.
"""

import os
import tempfile

import torch

GPU = torch.cuda.is_available()
if not GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def device() -> torch.device:
    """Where kernels run in this session: CUDA when present, else the CPU under the interpreter."""
    return torch.device("cuda" if GPU else "cpu")


@pytest.fixture(scope="session")
def float_dtypes():
    """Dtypes a kernel is tested in here: bf16 only on a GPU (the interpreter computes bf16 wrongly,
    docs/design.md §6)."""
    return (torch.float32, torch.float16, torch.bfloat16) if GPU else (torch.float32, torch.float16)


@pytest.fixture
def cpu_path(monkeypatch):
    """Ops on CPU tensors take the CPU path, as on a machine where Triton does not run on the CPU (not the
    interpreter, which this file turns on)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("ELECTRA_FAST_BACKEND", "auto")


def pytest_configure(config):
    # pytest-benchmark makes its storage folder, ./.benchmarks, when it starts (its configure runs last); the tests
    # time nothing, so it goes to the temporary directory instead of the working directory.
    if hasattr(config.option, "benchmark_storage"):
        config.option.benchmark_storage = "file://" + os.path.join(tempfile.gettempdir(), "electra-fast-benchmarks")
    config.addinivalue_line("markers", "gpu: needs a CUDA device")
    config.addinivalue_line("markers", "gpu_check: benchmarks/gpu_check.sh's correctness stage: the kernels "
                            "in fp16 and bf16 against fp64, random bits against the reference, a whole fused step")
    config.addinivalue_line("markers", "slow: takes more than a few seconds on a 2-core CPU")


def pytest_collection_modifyitems(config, items):
    if GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
