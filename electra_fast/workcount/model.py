"""What ``electra-fast inspect`` sets beside the counts, all models: the AOT compile figures of the configurations
the counted launches use, the occupancy those figures allow, and a roofline lower bound.

Roofline (a model, not a measurement): seconds >= max(FLOPs / dense bf16 peak, bytes / HBM bandwidth) with
vendor data-sheet peaks, for the op's minimum work and for the work counted in the kernel. The AOT figures are
those of the registered bf16 configuration (the counts ran in fp16).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

PEAKS = {  # vendor data sheets: dense bf16 FLOP/s, HBM bytes/s
    "A100": (312e12, 2.039e12),  # A100 80GB SXM
    "H100": (989e12, 3.35e12),  # H100 SXM
    "H200": (989e12, 4.8e12),
}
# Per-SM limits for the occupancy model (CUDA programming guide, compute capability 8.0 and 9.0): registers,
# shared memory (each block also takes 1 KiB reserved by the system), resident warps and blocks.
SM_LIMITS = {"sm_80": {"registers": 65536, "shared_bytes": 164 * 1024, "warps": 64, "blocks": 32},
             "sm_90a": {"registers": 65536, "shared_bytes": 228 * 1024, "warps": 64, "blocks": 32}}


def aot_rows(path: str | None = None) -> list[dict]:
    """The AOT report (``python -m electra_fast.aot --json``): read from ``path``, else compiled now in a
    subprocess with TRITON_INTERPRET unset."""
    if path:
        with open(path) as handle:
            return json.load(handle)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory() as folder:
        report = os.path.join(folder, "aot.json")
        subprocess.run([sys.executable, "-m", "electra_fast.aot", "--json", report], env=env,
                       capture_output=True, check=False)
        if not os.path.exists(report):
            return []
        with open(report) as handle:
            return json.load(handle)


# Kernels whose tiles come from the tile table per architecture (docs/design.md §7.5): counted with sm_90's,
# compiled per architecture with its own. Attention's passes are looked up by head dim and dropout; the
# generator head's one entry per dtype holds both passes' tiles ({constexpr: table field}).
ATTENTION_TABLE = {"attention_forward_kernel": "attention.forward", "attention_backward_dq_kernel": "attention.dq",
                   "attention_backward_dkdv_kernel": "attention.dkdv"}
GENERATOR_HEAD_TABLE = {
    "generator_head_forward_kernel": {"BLOCK_M": "forward_block_m", "BLOCK_V": "forward_block_v", "BLOCK_E": "block_e"},
    "generator_head_backward_kernel": {"BLOCK_M": "backward_block_m", "BLOCK_V": "backward_block_v",
                                       "BLOCK_E": "block_e"},
}


def arch_launch(launch, arch: str) -> tuple[dict, int, int]:
    """(constexprs, num_warps, num_stages) of ``launch`` as a GPU of ``arch`` makes it: a table kernel takes
    that architecture's tiles (bf16's: fp16 has the same), every other launch is the same everywhere."""
    from ..kernels import tiles

    c = launch.constexprs
    table_arch = "sm_80" if arch == "sm_80" else "sm_90"
    if launch.kernel in ATTENTION_TABLE:
        found = tiles.lookup(ATTENTION_TABLE[launch.kernel], table_arch, dtype="bf16", head_dim=c["BLOCK_D"],
                             dropout=bool(c["DROPOUT"]))
        blocks = {"BLOCK_M": found["block_m"], "BLOCK_N": found["block_n"]}
    elif launch.kernel in GENERATOR_HEAD_TABLE:
        found = tiles.lookup("generator_head", table_arch, dtype="bf16")
        blocks = {name: found[field] for name, field in GENERATOR_HEAD_TABLE[launch.kernel].items()}
    else:
        return c, launch.num_warps or 4, launch.num_stages or 3
    return {**c, **blocks}, found["num_warps"], found["num_stages"]


def aot_figures(launch, rows: list[dict], arch: str = "sm_90a") -> dict | None:
    """The registered configuration a launch uses (bf16 where it was counted in fp16), compiled for ``arch``."""
    constexprs, num_warps, num_stages = arch_launch(launch, arch)
    constexprs = {k: ("bf16" if k == "DOT_DTYPE" else v) for k, v in constexprs.items()}
    values = ",".join(f"{k}={v}" for k, v in sorted(constexprs.items()))
    prefix = f"{launch.kernel}[{values}|"
    suffix = f"|w{num_warps}s{num_stages}]"
    matches = [row for row in rows if row["arch"] == arch and row["kernel"].startswith(prefix)
               and row["kernel"].endswith(suffix) and "error" not in row]
    matches.sort(key=lambda row: "bf16" not in row["kernel"])
    return matches[0] if matches else None


def occupancy(registers: int, shared_bytes: int, num_warps: int, arch: str) -> float:
    """Resident warps per SM over the SM's maximum, from the occupancy rules: registers are allocated per warp
    in units of 256, shared memory per block plus 1 KiB, at most 64 warps and 32 blocks. A model."""
    limits = SM_LIMITS[arch]
    registers_per_warp = -(-registers * 32 // 256) * 256
    by_registers = limits["registers"] // (registers_per_warp * num_warps)
    by_shared = limits["shared_bytes"] // (shared_bytes + 1024)
    blocks = min(by_registers, by_shared, limits["warps"] // num_warps, limits["blocks"])
    return blocks * num_warps / limits["warps"]


def compiled_figures(launches: list, aot: list[dict], arch: str) -> dict:
    """The largest registers, spills and shared memory of a pass's launches compiled for ``arch``, and the
    lowest occupancy among them (None where a launch's configuration was not compiled)."""
    figures = [(launch, aot_figures(launch, aot, arch)) for launch in launches]
    found = [(launch, f) for launch, f in figures if f]
    if not found:
        return {"registers": None, "spills": None, "shared_bytes": None, "occupancy": None}
    return {
        "registers": max(f["registers"] for _, f in found),
        "spills": max(f["spills"] for _, f in found),
        "shared_bytes": max(f["shared_bytes"] for _, f in found),
        "occupancy": min(occupancy(f["registers"], f["shared_bytes"], arch_launch(launch, arch)[1], arch)
                         for launch, f in found),
    }


def roofline_seconds(flops: float, nbytes: float) -> dict:
    """Lower bound of a model: max(FLOPs / peak bf16 FLOP/s, bytes / peak HBM B/s) per GPU."""
    return {gpu: max(flops / peak_flops, nbytes / bandwidth) for gpu, (peak_flops, bandwidth) in PEAKS.items()}
