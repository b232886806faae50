"""The conventions every kernel module follows, and the launch configurations the AOT compile test builds.

``kernels/`` holds only ``@triton.jit`` kernels and thin launchers that take and return tensors: no nn.Module,
no autograd, no transformers import. It is installed as ``electra_fast.kernels`` and has no ``__init__.py``
(docs/design.md §2): a regular package named ``kernels`` in the repository root would shadow Hugging Face's
``kernels`` (which transformers imports) for anyone whose current directory is the root.

* ``interpreted()`` says whether kernels run in the Triton interpreter (on CPU tensors) rather than compiled for
  a GPU. Launchers pick their tiles from it: the interpreter has no registers to spill and costs per program,
  not per element, so it runs larger tiles (fewer programs to simulate).
* ``TRITON_DTYPES`` maps a torch dtype to its Triton dtype (for constexprs such as ``DOT_DTYPE``) and
  ``SIGNATURE_TYPES`` to its type in an AOT signature (``pointer_type(dtype)`` gives "*fp16", ...).
* Launchers are named ``forward(...)`` and, where a kernel has a gradient, ``backward(...)`` (philox.py holds
  device functions; its one launcher, ``philox_draws``, exists for a test); tile configuration objects are
  built with keyword arguments.
* Each module defines ``_register_launch_configs()`` and calls it once, at the end of the module. It calls
  ``register(kernel, signature, constexprs, num_warps=..., num_stages=...)`` once per configuration its
  launchers use on a GPU (docs/design.md §6): ``signature`` maps every non-constexpr argument, in the kernel's order, to
  its Triton type ("*fp32", "i32", "i64", "fp32", ...), ``constexprs`` maps constexpr arguments to values.
"""

from __future__ import annotations

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


def pointer_type(dtype: torch.dtype) -> str:
    """AOT signature type of a pointer to ``dtype`` elements, e.g. "*bf16"."""
    return "*" + SIGNATURE_TYPES[dtype]


@dataclass(frozen=True)
class LaunchConfig:
    kernel: object  # the @triton.jit function
    signature: dict
    constexprs: dict = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3

    @property
    def name(self) -> str:
        kernel_name = getattr(self.kernel, "__name__", None) or self.kernel.fn.__name__
        values = ",".join(f"{k}={v}" for k, v in sorted(self.constexprs.items()))
        pointer_types = ",".join(dict.fromkeys(t[1:] for t in self.signature.values() if t.startswith("*")))
        return f"{kernel_name}[{values}|{pointer_types}|w{self.num_warps}s{self.num_stages}]"


CONFIGS: list[LaunchConfig] = []


def register(kernel, signature: dict, constexprs: dict | None = None, *, num_warps: int = 4, num_stages: int = 3):
    constexprs = dict(constexprs or {})
    expected = [name for name in kernel.arg_names if name not in constexprs]
    if list(signature) != expected:
        raise ValueError(f"the signature of {kernel} must list {expected} in this order, got {list(signature)}")
    CONFIGS.append(LaunchConfig(kernel, dict(signature), constexprs, num_warps, num_stages))
