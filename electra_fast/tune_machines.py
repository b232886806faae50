"""What attention's tuner (electra_fast.tune) and the generator head's (electra_fast.tune_head) share
(docs/design.md §7.5): what their cost models assume of each table architecture, the records' file format, and
timing candidates into the table on a GPU."""

import json
import math

# The model's machine (data-sheet figures per SM and cycle): SMs, dense 16-bit MMA FLOP, L2 bytes, MUFU exp2,
# 32-bit integer multiplies (Philox), registers, shared memory and warps per SM, load latency in cycles.
MACHINES = {
    "sm_80": dict(sms=108, mma=2048, l2=64, mufu=16, imul=64, registers=65536, shared=164 * 1024, warps=64,
                  latency=600),
    "sm_90": dict(sms=132, mma=4096, l2=96, mufu=16, imul=64, registers=65536, shared=228 * 1024, warps=64,
                  latency=600),
}
# Philox-4x32 with 10 rounds: about 4 integer multiplies per round for each dropout draw.
PHILOX_MULTIPLIES = 40
# Shared memory a candidate may use: sm_80's entries also serve sm_86/89/12x (99 KB per block, kernels/tiles.py).
SHARED_CAP = {"sm_80": 99 * 1024, "sm_90": 227 * 1024}
TABLE_ARCH = {"sm_80": 80, "sm_90": 90}


def resident_programs(arch: str, registers: int, shared_bytes: int, num_warps: int) -> int:
    """Programs of a compiled candidate resident on one SM of ``arch`` at once: the fewest that registers
    (allocated in units of 8 per thread), shared memory or warps allow (0: it does not fit)."""
    m = MACHINES[arch]
    per_thread = math.ceil(registers / 8) * 8
    return min(m["registers"] // (per_thread * 32 * num_warps), m["shared"] // max(shared_bytes, 1),
               m["warps"] // num_warps)


def record_lines(records) -> str:
    """A JSON list with one record per line (the pruning and candidate files stay diffable)."""
    return "[\n" + ",\n".join(" " + json.dumps(record) for record in records) + "\n]\n"


def time_into_table(table: dict, kernel: str, arch: str, key: dict, candidates: list, run, repeats: int,
                    describe) -> None:
    """Time ``run`` (on a GPU) with each candidate's tiles standing in for the table's entry of (``kernel``,
    ``arch``, ``key``), through kernels.tiles.using, and write the fastest into that entry of ``table``, its
    source ``describe(milliseconds)``. Nothing is written without candidates."""
    import triton.testing

    from electra_fast.kernels import tiles

    values = tuple(key[name] for name in table["kernels"][kernel]["key"])
    timings = []
    for candidate in candidates:
        with tiles.using({(kernel, arch, *values): candidate}):
            ms = triton.testing.do_bench(run, rep=repeats)
        timings.append((ms, json.dumps(candidate, sort_keys=True), candidate))
        print(f"{kernel} {key} {candidate}: {ms:.4f} ms", flush=True)
    if not timings:
        return
    ms, _, best = min(timings)
    for entry in table["entries"]:
        if (entry["kernel"], entry["arch"]) == (kernel, arch) and all(entry[k] == v for k, v in key.items()):
            entry.update(best)
            entry["source"] = describe(ms)
