"""Which implementation an op runs: Triton kernels or the PyTorch reference (docs/design.md §3, Dispatch).

``ELECTRA_FAST_BACKEND=auto`` (default) runs Triton kernels on CUDA tensors, and on CPU tensors when
``TRITON_INTERPRET=1`` is set; other CPU tensors take the compiled CPU path (``electra_fast.cpu``, the
reference's results computed fused); anything else the reference. ``triton`` and ``reference`` force one side;
forcing ``triton`` where it cannot run is an error. ``use_backend(name)`` does the same in code.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import os
import subprocess
import sys

import torch

from .kernels.constants import interpreter_enabled

BACKENDS = ("auto", "triton", "reference")
_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("electra_fast_backend", default=None)


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name: str):
    """Run the ops inside the block on ``name`` ("auto", "triton" or "reference")."""
    token = _override.set(_check_name(name))
    try:
        yield
    finally:
        _override.reset(token)


# torch.compile cannot trace a ContextVar read: it calls this at trace time and keeps the answer, so a graph
# compiled under one backend keeps it (compile again after switching).
@torch.compiler.assume_constant_result
def requested_backend() -> str:
    name = _override.get()
    if name is None:
        name = os.environ.get("ELECTRA_FAST_BACKEND", "auto").strip().lower() or "auto"
        if name not in BACKENDS:
            raise ValueError(f"ELECTRA_FAST_BACKEND must be one of {BACKENDS}, got {name!r}")
    return name


# Looked up once at import: a cached function call here would be opaque to torch.compile.
_TRITON_IMPORTABLE = importlib.util.find_spec("triton") is not None


def triton_importable() -> bool:
    return _TRITON_IMPORTABLE


def triton_can_run(device: torch.device) -> bool:
    """Triton runs compiled on CUDA devices and interpreted on the CPU when TRITON_INTERPRET=1."""
    if not triton_importable():
        return False
    return device.type == "cuda" or (device.type == "cpu" and interpreter_enabled())


def use_cpu_path(device: torch.device) -> bool:
    """Whether an op on ``device`` that does not run its Triton kernel runs the compiled CPU path
    (``electra_fast.cpu``: the reference's results, fused) rather than the literal reference."""
    return device.type == "cpu" and requested_backend() == "auto"


def use_triton(device: torch.device) -> bool:
    """Whether an op on ``device`` runs its Triton kernel (True) or the reference (False)."""
    name = requested_backend()
    if name == "reference":
        return False
    if triton_can_run(device):
        return True
    if name == "triton":
        raise RuntimeError(
            f"backend 'triton' was forced but Triton cannot run on {device}: it needs a CUDA device, or "
            "TRITON_INTERPRET=1 set before Triton is imported for CPU tensors"
        )
    return False


def rerun_with_interpreter(args) -> int:
    """Run the sub-command ``args`` of ``electra-fast`` again in a process with TRITON_INTERPRET=1 (it must be set
    before Triton is imported, so the current process cannot switch); its exit code. ``args.command`` names the
    sub-command and ``args.raw_argv`` holds its arguments, as ``cli.main`` sets them."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    return subprocess.call([sys.executable, "-m", "electra_fast", args.command, *args.raw_argv], env=env)
