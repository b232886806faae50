"""Out-of-bounds checker and work counters for Triton launches run in the interpreter (TRITON_INTERPRET=1).

``with sanitize() as launches:`` patches the interpreter's own hooks (``triton.runtime.interpreter``) and appends
one ``LaunchCounts`` per kernel launch made inside the block:

* memory safety: every lane of every ``tl.load`` / ``tl.store`` that its mask leaves active must address bytes
  inside the untyped storage of a torch tensor passed to that launch; other lanes are counted in
  ``out_of_bounds`` (and dropped from the access, so a bad kernel cannot corrupt or crash the process);
* work: ``tl.dot`` FLOPs as 2*M*N*K, and bytes loaded from / stored to global memory (active lanes x element
  size; these are requests, before any cache, so they bound DRAM traffic from above).

Why not triton-viz's sanitizer: its release 3.0 does not import under Triton 3.9 (it patches
``InterpreterBuilder.create_make_block_ptr``, which 3.9 removed) and it pulls in z3, flask and a web frontend.

The interpreter copies every tensor argument's storage to the host before running programs; on CPU tensors
that copy is the storage itself, so the recorded address ranges are those the kernel's pointers point into.
``skip_dot_math=True`` returns zeros from ``tl.dot`` instead of multiplying (counting only: values are wrong,
control flow that depends on loaded data is not affected, dot results never steer it in these kernels).
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class LaunchCounts:
    """What one kernel launch did, summed over its programs."""

    kernel: str
    grid: tuple = ()
    constexprs: dict = field(default_factory=dict)
    num_warps: int | None = None
    num_stages: int | None = None
    dot_flops: int = 0
    bytes_loaded: int = 0
    bytes_stored: int = 0
    out_of_bounds: int = 0  # active lanes whose bytes lie outside every tensor argument
    out_of_bounds_examples: list = field(default_factory=list)  # (op, address, element bytes), the first few
    ranges: list = field(default_factory=list, repr=False)  # [start, end) of each tensor argument's storage

    @property
    def bytes(self) -> int:
        return self.bytes_loaded + self.bytes_stored


def _tensor_ranges(values) -> list[tuple[int, int]]:
    """[start, end) byte range of the storage under every tensor among ``values`` (tuples searched too)."""
    ranges = []
    for value in values:
        if isinstance(value, tuple):
            ranges += _tensor_ranges(value)
        elif isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            ranges.append((storage.data_ptr(), storage.data_ptr() + storage.nbytes()))
    return ranges


def _element_bytes(pointer_handle) -> int:
    return max(1, pointer_handle.get_element_ty().primitive_bitwidth // 8)


class _Checker:
    """Holds the launch being run and checks / counts each memory access of it."""

    def __init__(self, skip_dot_math: bool):
        self.skip_dot_math = skip_dot_math
        self.launches: list[LaunchCounts] = []
        self.current: LaunchCounts | None = None

    def check(self, op: str, ptrs, mask) -> np.ndarray:
        """Count the access; return the mask with out-of-bounds lanes switched off."""
        launch = self.current
        addresses = ptrs.data.astype(np.uint64)
        active = np.broadcast_to(np.asarray(mask.data, dtype=bool), addresses.shape)
        size = _element_bytes(ptrs)
        inside = np.zeros(addresses.shape, dtype=bool)
        for start, end in launch.ranges:
            inside |= (addresses >= np.uint64(start)) & (addresses + np.uint64(size) <= np.uint64(end))
        bad = active & ~inside
        n_active = int(active.sum())
        if op == "load":
            launch.bytes_loaded += n_active * size
        else:
            launch.bytes_stored += n_active * size
        n_bad = int(bad.sum())
        if n_bad:
            launch.out_of_bounds += n_bad
            for address in addresses[bad][: max(0, 4 - len(launch.out_of_bounds_examples))]:
                launch.out_of_bounds_examples.append((op, int(address), size))
        return active & inside


@contextlib.contextmanager
def sanitize(*, skip_dot_math: bool = False):
    """Check and count every interpreted launch in the block; yields the list of ``LaunchCounts``."""
    from triton.runtime import interpreter

    builder_class = interpreter.InterpreterBuilder
    executor_class = interpreter.GridExecutor
    checker = _Checker(skip_dot_math)
    originals = {
        "load": builder_class.create_masked_load, "store": builder_class.create_masked_store,
        "dot": builder_class.create_dot, "grid": builder_class.set_grid_dim,
        "call": executor_class.__call__, "host_args": getattr(executor_class, "_init_args_hst", None),
    }

    # Only the leading arguments are named: the trailing ones (cache policy, precision, ...) vary by version.
    def masked_load(self, ptrs, mask, *rest, **options):
        if checker.current is not None:
            mask = interpreter.TensorHandle(checker.check("load", ptrs, mask), mask.dtype)
        return originals["load"](self, ptrs, mask, *rest, **options)

    def masked_store(self, ptrs, value, mask, *rest, **options):
        if checker.current is not None:
            mask = interpreter.TensorHandle(checker.check("store", ptrs, mask), mask.dtype)
        return originals["store"](self, ptrs, value, mask, *rest, **options)

    def dot(self, a, b, d, *rest, **options):
        if checker.current is not None:
            checker.current.dot_flops += 2 * int(a.data.size) * int(b.data.shape[-1])  # 2 * M * K * N (per batch)
            if checker.skip_dot_math:
                return interpreter.TensorHandle(np.array(d.data, copy=True), d.dtype.scalar)
        return originals["dot"](self, a, b, d, *rest, **options)

    def set_grid_dim(self, *grid):
        if checker.current is not None:
            checker.current.grid = tuple(int(g) for g in grid)
        return originals["grid"](self, *grid)

    def init_host_args(self, args_dev, kwargs):
        """The host copies are what the kernel's pointers address (the same storages for CPU tensors)."""
        args_hst, kwargs_hst = originals["host_args"](self, args_dev, kwargs)
        if checker.current is not None:
            checker.current.ranges = _tensor_ranges(list(args_hst) + list(kwargs_hst.values()))
        return args_hst, kwargs_hst

    def call(self, *args, **kwargs):
        names = inspect.getfullargspec(self.fn).args
        bound = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k in names}
        constexprs = {name: bound[name] for name in getattr(self, "constexprs", ()) if name in bound}
        launch = LaunchCounts(
            kernel=self.fn.__name__, constexprs=constexprs,
            num_warps=kwargs.get("num_warps"), num_stages=kwargs.get("num_stages"),
            ranges=_tensor_ranges(list(args) + list(kwargs.values())),  # replaced by the host copies' ranges
        )
        checker.current = launch
        try:
            return originals["call"](self, *args, **kwargs)
        finally:
            checker.current = None
            checker.launches.append(launch)

    builder_class.create_masked_load = masked_load
    builder_class.create_masked_store = masked_store
    builder_class.create_dot = dot
    builder_class.set_grid_dim = set_grid_dim
    executor_class.__call__ = call
    if originals["host_args"] is not None:  # Triton 3.9 (elsewhere the arguments' own ranges are kept)
        executor_class._init_args_hst = init_host_args
    try:
        yield checker.launches
    finally:
        builder_class.create_masked_load = originals["load"]
        builder_class.create_masked_store = originals["store"]
        builder_class.create_dot = originals["dot"]
        builder_class.set_grid_dim = originals["grid"]
        executor_class.__call__ = originals["call"]
        if originals["host_args"] is not None:
            executor_class._init_args_hst = originals["host_args"]
