"""Multi-process data parallelism for ``electra-fast pretrain`` under ``torchrun`` (one process per device).

``torchrun --nproc_per_node=N -m electra_fast pretrain ...`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` in
each process's environment; :func:`setup` then joins the process group (NCCL on CUDA, Gloo on the CPU). Without
``WORLD_SIZE > 1`` every helper here is a no-op, so a single process runs exactly as before.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """Whether this process was launched as one of several (``torchrun`` with ``WORLD_SIZE > 1``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    return int(os.environ.get("RANK", "0")) if is_distributed() else 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """Under torchrun, a CUDA run uses the GPU ``cuda:LOCAL_RANK`` (one per process); else ``device``."""
    if is_distributed() and device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def setup(device: torch.device) -> None:
    """Join the process group (once per process); NCCL for CUDA devices, Gloo on the CPU."""
    if not is_distributed() or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL and the object collectives use the current device
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The module to run forward/backward through: DistributedDataParallel under torchrun, else ``model``.

    Every parameter gets a gradient in every step (checked for the tied, gdes and unshared embeddings), so
    DDP does not need ``find_unused_parameters``; parameters shared between generator and discriminator are
    one ``Parameter`` and are reduced once. The only buffers are constant position/token-type ids, so they
    are not re-broadcast before every forward.
    """
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   broadcast_buffers=False)


def gradient_sync(model: torch.nn.Module, sync: bool):
    """Context for one micro-batch's backward: skip DDP's all-reduce unless ``sync`` (the last micro-batch)."""
    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def mean_across_ranks(values: torch.Tensor) -> torch.Tensor:
    """``values`` averaged over the processes (unchanged in a single process)."""
    if not is_distributed():
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / world_size()


def sum_across_ranks(values: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every process if ``flag`` is true on any (so all of them stop at the same step)."""
    if not is_distributed():
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def any_rank_on_device(flag: torch.Tensor) -> torch.Tensor:
    """A bool tensor, true on every process if ``flag`` is true on any: reduced on the device, never read on the
    host (the step does not wait for it)."""
    if not is_distributed():
        return flag
    value = flag.to(torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value.bool()


def gather_objects(value) -> list:
    """``[value of rank 0, value of rank 1, ...]`` on every process (``[value]`` in a single process)."""
    if not is_distributed():
        return [value]
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def seed_this_rank(seed: int) -> None:
    """Give each process its own torch RNG stream (hidden dropout) from ``seed``; nothing in a single process."""
    if is_distributed():
        torch.manual_seed(seed * world_size() + rank())
