"""Launch configurations that the AOT compile test builds for sm_80 and sm_90a (DESIGN §6).

Each kernel module calls ``register(kernel, signature, constexprs, num_warps=..., num_stages=...)`` once per
configuration it launches with: ``signature`` maps every non-constexpr argument to its Triton type
("*fp32", "i32", "i64", "fp32", ...), ``constexprs`` maps constexpr arguments to values.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    CONFIGS.append(LaunchConfig(kernel, dict(signature), dict(constexprs or {}), num_warps, num_stages))
