"""The conventions every kernel module follows, and the launch configurations the AOT compile test builds.

``kernels/`` holds only ``@triton.jit`` kernels and thin launchers that take and return tensors: no nn.Module,
no autograd, no transformers import. It is installed as ``electra_fast.kernels`` and has no ``__init__.py``
(docs/design.md §2): a regular package named ``kernels`` in the repository root would shadow Hugging Face's
``kernels`` (which transformers imports) for anyone whose current directory is the root.

* ``interpreted()`` says whether kernels run in the Triton interpreter (on CPU tensors) rather than compiled for
  a GPU. Launchers pick their tiles from it: the interpreter has no registers to spill and costs per program,
  not per element, so it runs larger tiles (fewer programs to simulate).
* ``gpu_tiles()`` says whether launchers pick a GPU's tiles and grid: when compiled for a GPU, or inside
  ``gpu_geometry(...)``, which also gives the SM count and architecture they read through
  ``multiprocessors(device)`` and ``target_arch(device)`` (and two scaling fields for counted work); outside it
  they read the device.
* ``target_arch(device)`` is the architecture a GPU launch picks its tiles for ("sm_80", "sm_90"; kernels/tiles.py).
* ``TRITON_DTYPES`` maps a torch dtype to its Triton dtype (for constexprs such as ``DOT_DTYPE``) and
  ``SIGNATURE_TYPES`` to its type in an AOT signature (``pointer_type(dtype)`` gives "*fp16", ...).
* Launchers are named ``forward(...)`` and, where a kernel has a gradient, ``backward(...)`` (philox.py holds
  device functions; its one launcher, ``philox_draws``, exists for a test); tile configuration objects are
  built with keyword arguments.
* Each module defines ``_register_launch_configs()`` and calls it once, at the end of the module. It registers
  the configurations its launchers use on a GPU (docs/design.md §6) in one of two ways:

  - ``register_launches(run, expect=...)`` (preferred): ``run(arch)`` calls the module's own launchers on
    representative CPU tensors (ELECTRA's shapes, contiguous as the model passes them). The AOT compile records
    every launch instead of running it, and compiles it with the specialisation Triton's JIT binder computes
    for those arguments (16-byte aligned pointers and sizes or strides divisible by 16 get ``tt.divisibility``,
    ints equal to 1 become constants, ``do_not_specialize`` arguments get neither), with the tiles the launchers
    pick for ``arch``: the binary the GPU would build.
  - ``register(kernel, signature, constexprs, num_warps=..., num_stages=...)``: ``signature`` maps every
    non-constexpr argument, in the kernel's order, to its Triton type ("*fp32", "i32", "i64", "fp32", ...),
    ``constexprs`` maps constexpr arguments to values. Without real values the AOT assumes only what every
    launch satisfies (pointers 16-byte aligned) and specialises no integer.

  ``expect`` names what the SASS must show, checked by ``python -m electra_fast.aot`` (``EXPECTATIONS``):
  "wgmma" (HGMMA in a loop, on sm_90a, for 16-bit inputs) and "async_copy" (LDGSTS or a TMA load in a loop).
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field

import torch
import triton.language as tl

# Whether TRITON_INTERPRET is set, i.e. @triton.jit kernels run in the interpreter: the test dispatch uses to send
# CPU tensors to the kernels, imported here under the kernels' name for it.
from .constants import interpreter_enabled as interpreted  # noqa: F401 (re-exported for the kernel modules)

TRITON_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
SIGNATURE_TYPES = {
    torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
    torch.int64: "i64", torch.int32: "i32", torch.uint8: "u8", torch.bool: "i1",
}
ARCHITECTURES = ("sm_80", "sm_90")  # the tile table's architectures, compiled as sm_80 and sm_90a
# What a registration may expect of its SASS (electra_fast.aot checks them).
EXPECTATIONS = ("wgmma", "async_copy")


def pointer_type(dtype: torch.dtype) -> str:
    """AOT signature type of a pointer to ``dtype`` elements, e.g. "*bf16"."""
    return "*" + SIGNATURE_TYPES[dtype]


@dataclass(frozen=True)
class LaunchConfig:
    """One binary to compile ahead of time. ``args`` (launch-captured configurations) holds the launch's
    arguments by name, tensors replaced by ``PointerArg``; ``signature``/``constexprs`` describe the rest."""

    kernel: object  # the @triton.jit function
    signature: dict
    constexprs: dict = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3
    archs: tuple = ARCHITECTURES
    expect: tuple = ()
    args: dict | None = None

    @property
    def name(self) -> str:
        kernel_name = getattr(self.kernel, "__name__", None) or self.kernel.fn.__name__
        values = ",".join(f"{k}={v}" for k, v in sorted(self.constexprs.items()))
        pointer_types = ",".join(dict.fromkeys(t[1:] for t in self.signature.values() if t.startswith("*")))
        return f"{kernel_name}[{values}|{pointer_types}|w{self.num_warps}s{self.num_stages}]"


@dataclass(frozen=True)
class PointerArg:
    """What Triton's binder reads of a tensor argument: its dtype and its address (for the alignment)."""

    dtype: torch.dtype
    address: int

    def data_ptr(self) -> int:
        return self.address


CONFIGS: list[LaunchConfig] = []
# run(arch) callables of register_launches with their expectations, expanded by capture_launches (AOT only).
LAUNCHERS: list[tuple] = []


def register(kernel, signature: dict, constexprs: dict | None = None, *, num_warps: int = 4, num_stages: int = 3,
             expect: tuple = ()):
    constexprs = dict(constexprs or {})
    expected = [name for name in kernel.arg_names if name not in constexprs]
    if list(signature) != expected:
        raise ValueError(f"the signature of {kernel} must list {expected} in this order, got {list(signature)}")
    _check_expect(expect)
    CONFIGS.append(LaunchConfig(kernel, dict(signature), constexprs, num_warps, num_stages, expect=tuple(expect)))


def register_launches(run, *, expect: tuple = ()):
    """Register the launches ``run(arch)`` makes (module docstring); nothing runs until the AOT compile asks."""
    _check_expect(expect)
    LAUNCHERS.append((run, tuple(expect)))


def _check_expect(expect):
    unknown = set(expect) - set(EXPECTATIONS)
    if unknown:
        raise ValueError(f"unknown expectations {sorted(unknown)}; known: {EXPECTATIONS}")


# The SM count a recorded launch sizes its grid for, per table architecture (A100, H100); it changes no binary.
ARCH_SMS = {"sm_80": 108, "sm_90": 132}


@dataclass(frozen=True)
class GpuGeometry:
    """What launchers read of a GPU besides their inputs, given explicitly (``gpu_geometry``)."""

    sms: int  # streaming multiprocessors: the generator head splits its vocabulary to fill them
    arch: str  # the tile table's architecture ("sm_80", "sm_90") whose tiles attention takes
    # Scaling fields for work counted on a scaled-down grid (electra_fast.workcount): None keeps the launch's own.
    rtd_backward_groups: int | None = None  # at most this many RTD backward row groups (else MAX_BACKWARD_GROUPS)
    generator_head_split_rows: int | None = None  # the generator head splits its vocabulary as for this many rows


_geometry: contextvars.ContextVar[GpuGeometry | None] = contextvars.ContextVar("electra_fast_gpu_geometry",
                                                                               default=None)


@contextlib.contextmanager
def gpu_geometry(*, sms: int, arch: str, rtd_backward_groups: int | None = None,
                 generator_head_split_rows: int | None = None):
    """Launch inside the block as on a GPU with ``sms`` SMs of the table architecture ``arch``, even under the
    interpreter: GPU tiles and grids, SM count and architecture from here, not from the device. Yields the
    ``GpuGeometry``; the previous one (usually none) is back on exit, an exception included."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")
    if sms < 1 or any(n is not None and n < 1 for n in (rtd_backward_groups, generator_head_split_rows)):
        raise ValueError("sms and the scaling fields must be at least 1 (the scaling fields may be None)")
    geometry = GpuGeometry(sms, arch, rtd_backward_groups, generator_head_split_rows)
    token = _geometry.set(geometry)
    try:
        yield geometry
    finally:
        _geometry.reset(token)


def current_geometry() -> GpuGeometry | None:
    """The innermost ``gpu_geometry`` in force, else None."""
    return _geometry.get()


def gpu_tiles() -> bool:
    """Whether launchers pick a GPU's tiles and grid: compiled for a GPU, or inside ``gpu_geometry``. Else the
    interpreter's own (it costs per program, not per element: larger tiles, fewer programs)."""
    return not interpreted() or _geometry.get() is not None


def multiprocessors(device: torch.device) -> int:
    """The SM count a launch on ``device`` sizes its grid for: ``gpu_geometry``'s, else the device's."""
    geometry = _geometry.get()
    if geometry is not None:
        return geometry.sms
    return torch.cuda.get_device_properties(device).multi_processor_count


def target_arch(device: torch.device) -> str:
    """The tile table's architecture for a GPU launch on ``device`` (kernels/tiles.py maps other GPUs to it):
    ``gpu_geometry``'s (the one being recorded, ``capture_launches``), else the device's."""
    geometry = _geometry.get()
    if geometry is not None:
        return geometry.arch
    from .tiles import table_arch

    return table_arch(torch.cuda.get_device_capability(device))


class _Recorder:
    """Stands in for a JIT function's ``run`` during capture: keeps the launch instead of compiling it."""

    def __init__(self, kernel, arch, expect, out):
        self.kernel, self.arch, self.expect, self.out = kernel, arch, expect, out

    def __call__(self, *args, grid, warmup, **kwargs):
        names = self.kernel.arg_names
        bound = dict(zip(names, args))
        bound.update({k: v for k, v in kwargs.items() if k in names})
        options = {k: v for k, v in kwargs.items() if k not in names}
        values = {k: PointerArg(v.dtype, v.data_ptr()) if isinstance(v, torch.Tensor) else v for k, v in bound.items()}
        constexprs = {p.name: values[p.name] for p in self.kernel.params if p.is_constexpr}
        signature = {k: _value_type(v) for k, v in values.items() if k not in constexprs}
        self.out.append(LaunchConfig(
            self.kernel, signature, constexprs, options.get("num_warps", 4), options.get("num_stages", 3),
            archs=(self.arch,), expect=self.expect, args=values))


def _value_type(value) -> str:
    if isinstance(value, PointerArg):
        return pointer_type(value.dtype)
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    return "fp32"


@contextlib.contextmanager
def _recording(kernels, arch, expect, out):
    """Within the block, ``kernels`` record their launches instead of running, on the CPU, as a GPU of ``arch``
    would make them (``gpu_geometry``: its tiles, grid and SM count)."""
    for kernel in kernels:  # an instance attribute shadows JITFunction.run, which kernel[grid](...) calls
        kernel.run = _Recorder(kernel, arch, expect, out)
    try:
        with gpu_geometry(sms=ARCH_SMS[arch], arch=arch):
            yield
    finally:
        for kernel in kernels:
            del kernel.run


def capture_launches(kernels) -> list[LaunchConfig]:
    """Run every ``register_launches`` callable for every architecture with ``kernels`` (the JIT functions of the
    kernel modules) recording instead of launching; one configuration per launch, in order (the AOT compile
    merges launches that build the same binary)."""
    found = []
    for run, expect in LAUNCHERS:
        for arch in ARCHITECTURES:
            with _recording(kernels, arch, expect, found), torch.no_grad():
                run(arch)
    return found
