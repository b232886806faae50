"""The generator head's tile table entries (kernels/tiles.py family "generator_head", docs/design.md §7.5).

``python -m electra_fast.tune prune-head --out DIR`` (CPU, TRITON_INTERPRET unset) compiles, for sm_80 and sm_90a,
every candidate of each pass of a training step (forward with gradients, backward) through the launchers at
``SHAPE`` in bf16 with the JIT's specialisation (electra_fast.aot), keeps those with no spill, shared memory
within the table cap, HGMMA in a loop on sm_90a and 16-byte asynchronous copies in a loop, and writes every
record to DIR/pruning-generator-head-<Triton version>.json. Where DIR already holds the other Triton's record
(3.6.0 is the GPU machine's, 3.9.0 the newest), a candidate survives only if it passed under both. A table
entry shares the E chunk, warps and stages between the passes (``generator_head.Tiles``), so a combination is
(E chunk, warps, stages) with the forward's and the backward's logit tiles: the surviving combination with the
lowest modelled forward-with-gradients + backward cost wins, for bf16 and fp16 (the same instructions with
another MMA type). fp32 keeps its hand-picked entry (IEEE products, no tensor cores to shape tiles for).
``electra-fast tune --kernels generator_head`` times the surviving combinations on a GPU.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import torch

from .tune_machines import (
    MACHINES,
    PHILOX_MULTIPLIES,
    SHARED_CAP,
    TABLE_ARCH,
    record_lines,
    resident_programs,
    time_into_table,
)

# ELECTRA-Base pre-training's generator head as the issue names it: batch 256 x 512 tokens, 79 masked slots per
# sequence (15.5 %), E = 768, BERT's vocabulary.
SHAPE = dict(rows=256 * 79, width=768, vocab=30522)
PRUNED_DTYPE = "bf16"
# Cut Cross-Entropy's ranges, narrowed to what compiles on a shared 2-core CPU in minutes: logit tiles of 64 or
# 128 on each side (256 left out: 64 x 128 already spilled the forward's Philox tile, design §5.5), E chunks of
# 32 or 64, 4 or 8 warps, 2 or 3 stages.
BLOCKS = (64, 128)
BLOCK_E = (32, 64)
NUM_WARPS = (4, 8)
NUM_STAGES = (2, 3)
# The passes pruned: the training step's. The forward without gradients (evaluation) runs the same loops less
# the second GEMM; the winner's is compiled and checked with every registered launch (python -m electra_fast.aot).
PASSES = ("forward_grad", "backward")
SHARED = ("block_e", "num_warps", "num_stages")


def pass_candidates():
    """(pass, tiles) for every per-pass candidate, in a fixed order; tiles name the pass's own block fields."""
    for name in PASSES:
        prefix = "backward" if name == "backward" else "forward"
        for block_m, block_v, block_e, warps, stages in itertools.product(BLOCKS, BLOCKS, BLOCK_E, NUM_WARPS,
                                                                          NUM_STAGES):
            yield name, {f"{prefix}_block_m": block_m, f"{prefix}_block_v": block_v, "block_e": block_e,
                         "num_warps": warps, "num_stages": stages}


def _full_tiles(tiles_: dict) -> dict:
    """A table entry's tiles from one pass's: the other pass's blocks are placeholders (64) the pass ignores."""
    return {"forward_block_m": 64, "forward_block_v": 64, "backward_block_m": 64, "backward_block_v": 64, **tiles_}


def _capture(name: str, arch: str, tiles_: dict):
    """The launch configuration pass ``name`` gets on ``arch`` with ``tiles_``, captured from the launchers."""
    from electra_fast.kernels import generator_head, registry, tiles

    launches = []
    jit = [generator_head.generator_head_forward_kernel, generator_head.generator_head_backward_kernel]
    with tiles.using({("generator_head", arch, PRUNED_DTYPE): _full_tiles(tiles_)}), \
            registry._recording(jit, arch, ("wgmma", "async_copy"), launches):
        generator_head.representative_launch(torch.bfloat16, SHAPE["width"],
                                             compute_grad=name != "forward", rows=SHAPE["rows"],
                                             vocab=SHAPE["vocab"])
    kernel = "generator_head_backward_kernel" if name == "backward" else "generator_head_forward_kernel"
    (config,) = [c for c in launches if c.name.startswith(kernel + "[")]
    return config


def model_cost(name: str, arch: str, tiles_: dict, row: dict) -> float:
    """Estimated cycles of one pass at SHAPE (a model, not a measurement). As attention's (tune.model_cost):
    programs in waves of SMs x programs resident per SM; per E chunk a step takes the resident programs' summed
    MMA and L2 work or the load latency over the stages in flight, whichever is longer; per logit tile add the
    element-wise work (exp; the forward's Philox draw per element) and the fp32 accumulator's read-modify-write
    in global memory, 8 * E bytes per owned row (forward: rows, backward: vocabulary ids) and tile, which
    larger tiles on the accumulator's other side cut."""
    m = MACHINES[arch]
    rows, width, vocab = SHAPE["rows"], SHAPE["width"], SHAPE["vocab"]
    backward = name == "backward"
    prefix = "backward" if backward else "forward"
    block_m, block_v = tiles_[f"{prefix}_block_m"], tiles_[f"{prefix}_block_v"]
    block_e, stages = tiles_["block_e"], tiles_["num_stages"]
    chunks = math.ceil(width / block_e)
    if backward:  # a program per vocabulary tile walks every row tile
        programs, tiles_per_program, owned = math.ceil(vocab / block_v), math.ceil(rows / block_m), block_v
    else:  # a program per (row tile, split) walks its split's vocabulary tiles (kernels/generator_head.py)
        row_programs, vocab_tiles = math.ceil(rows / block_m), math.ceil(vocab / block_v)
        splits = min(vocab_tiles, max(1, math.ceil(4 * m["sms"] / row_programs)))
        programs, tiles_per_program, owned = row_programs * splits, math.ceil(vocab_tiles / splits), block_m
    gemms = 1 if name == "forward" else 2
    resident = resident_programs(arch, row["registers"], row["shared_bytes"], tiles_["num_warps"])
    if resident == 0:
        return math.inf
    waves = math.ceil(programs / (m["sms"] * resident))
    chunk_work = gemms * (2 * block_m * block_v * block_e / m["mma"] + (block_m + block_v) * block_e * 2 / m["l2"])
    step = max(resident * chunk_work, m["latency"] / (stages - 1))
    elements = block_m * block_v
    tile_work = (elements / m["mufu"] + (0 if backward else elements * PHILOX_MULTIPLIES / m["imul"])
                 + (8 * width * owned / m["l2"] if gemms == 2 else 0.0))
    return waves * tiles_per_program * (chunks * step + resident * tile_work)


def _other_records(out_dir: Path, version: str) -> dict:
    """{(pass, arch, tiles json): failed} from the other Triton's pruning record in ``out_dir``, if any."""
    found = {}
    for path in sorted(out_dir.glob("pruning-generator-head-*.json")):
        if path.name != f"pruning-generator-head-{version}.json":
            for record in json.loads(path.read_text()):
                found[_key(record)] = record["failed"]
    return found


def _key(record: dict) -> tuple:
    tiles_ = {k: v for k, v in record.items() if k.endswith(("block_m", "block_v")) or k in SHARED}
    return record["pass"], record["arch"], json.dumps(tiles_, sort_keys=True)


def prune(out_dir: Path) -> dict:
    import triton

    from electra_fast import aot
    from electra_fast.kernels import tiles

    records, jobs = [], []
    for arch in tiles.ARCHS:
        for name, tiles_ in pass_candidates():
            records.append(dict(**{"pass": name, "arch": arch, "dtype": PRUNED_DTYPE}, **tiles_))
            config = _capture(name, arch, tiles_)
            jobs.append((config, TABLE_ARCH[arch], aot.specialise(config, TABLE_ARCH[arch])))
    print(f"compiling {len(jobs)} generator-head candidates under Triton {triton.__version__}", flush=True)
    for record, row in zip(records, aot.compile_all(jobs)):
        problems = list(row["problems"])
        if "error" not in row:
            record.update(registers=row["registers"], spills=row["spills"], shared_bytes=row["shared_bytes"],
                          hgmma_in_loop=row["hgmma_in_loop"], async_copies_in_loop=row["async_copies_in_loop"])
            if row["shared_bytes"] > SHARED_CAP[record["arch"]]:
                problems.append(f"shared memory {row['shared_bytes']} > {SHARED_CAP[record['arch']]} (table cap)")
        record["failed"] = "; ".join(problems) or None
        if record["failed"] is None:
            tiles_ = {k: v for k, v in record.items() if k.endswith(("block_m", "block_v")) or k in SHARED}
            record["model_cycles"] = round(model_cost(record["pass"], record["arch"], tiles_, row))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"pruning-generator-head-{triton.__version__}.json").write_text(
        record_lines(records))
    other = _other_records(out_dir, triton.__version__)
    return _write(records, other)


def combinations(records: list, other: dict) -> dict:
    """{arch: [combination, ...]} of surviving passes (under this Triton and, where recorded, the other): per
    (E chunk, warps, stages), every forward tiles that pass (with gradients) with every backward tiles that
    pass, each with its modelled cost (forward with gradients + backward), cheapest first."""
    alive = [r for r in records if r["failed"] is None and other.get(_key(r)) is None]
    result = {}
    for arch in sorted({r["arch"] for r in records}):
        found = []
        for shared in sorted({tuple(r[k] for k in SHARED) for r in alive if r["arch"] == arch}):
            def of(name, shared=shared):
                return [r for r in alive if r["arch"] == arch and r["pass"] == name
                        and tuple(r[k] for k in SHARED) == shared]
            for forward, backward in itertools.product(of("forward_grad"), of("backward")):
                found.append(dict(arch=arch, dtype=PRUNED_DTYPE, **dict(zip(SHARED, shared)),
                                  forward_block_m=forward["forward_block_m"],
                                  forward_block_v=forward["forward_block_v"],
                                  backward_block_m=backward["backward_block_m"],
                                  backward_block_v=backward["backward_block_v"],
                                  model_cycles=forward["model_cycles"] + backward["model_cycles"],
                                  registers=max(forward["registers"], backward["registers"])))
        result[arch] = sorted(found, key=_rank)
    return result


TILE_FIELDS = ("forward_block_m", "forward_block_v", "backward_block_m", "backward_block_v", "block_e", "num_warps",
               "num_stages")


def _rank(combination):
    """Lowest modelled cycles first; ties to fewer registers, then the tiles (deterministic)."""
    return (combination["model_cycles"], combination["registers"], *(combination[k] for k in TILE_FIELDS))


def _write(records: list, other: dict) -> dict:
    """The winners into the table (bf16 and fp16 of each architecture), the surviving combinations into
    tile_candidates_generator_head.json beside it."""
    import triton

    from electra_fast.kernels import tiles

    table = json.loads(tiles.TABLE_PATH.read_text())
    tiles.parse(table, tiles.TABLE_PATH)
    found = combinations(records, other)
    both = "Triton 3.6 and 3.9" if other else f"Triton {triton.__version__}"
    winners = {arch: ranked[0] for arch, ranked in found.items() if ranked}
    for entry in table["entries"]:
        best = winners.get(entry["arch"]) if entry["kernel"] == "generator_head" else None
        if best is not None and entry["dtype"] in ("bf16", "fp16"):
            entry.update({k: best[k] for k in TILE_FIELDS})
            entry["source"] = (f"cost model over the AOT survivors under {both} (bf16, {best['model_cycles']} "
                               f"modelled cycles forward with gradients + backward, {best['registers']} registers)")
    tiles.TABLE_PATH.write_text(tiles.dumps(table))
    listed = [c for arch in sorted(found) for c in found[arch]]
    candidates_path().write_text(record_lines(listed))
    return winners


def candidates_path() -> Path:
    """The surviving combinations, beside the table (what ``electra-fast tune`` times)."""
    from electra_fast.kernels import tiles

    return tiles.TABLE_PATH.with_name("tile_candidates_generator_head.json")


def tune(table: dict, arch: str, name: str, repeats: int = 50) -> None:
    """Time every surviving combination of ``arch`` on this GPU (forward with gradients + backward at SHAPE, in
    bf16 and fp16) and write the fastest into ``table``'s entries (tune.tune writes the file)."""
    from electra_fast.kernels import generator_head

    found = [c for c in json.loads(candidates_path().read_text()) if c["arch"] == arch]
    for dtype_name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        rows, width, vocab = SHAPE["rows"], SHAPE["width"], SHAPE["vocab"]
        hidden = torch.randn(rows, width, device="cuda", dtype=dtype)
        weight = torch.randn(vocab, width, device="cuda", dtype=dtype) * width**-0.5
        bias = torch.zeros(vocab, device="cuda", dtype=dtype)
        targets = torch.randint(vocab, (rows,), device="cuda")
        scale = torch.full((rows,), 1.0 / rows, device="cuda")

        def run():
            lse, *_ = generator_head.forward(hidden, weight, bias, targets, temperature=1.0, disallow_correct=True,
                                             seed=generator_head.AOT_SEED, compute_grad=True)
            return generator_head.backward(hidden, weight, bias, targets, lse, scale)

        time_into_table(table, "generator_head", arch, dict(dtype=dtype_name),
                        [{k: c[k] for k in TILE_FIELDS} for c in found], run, repeats,
                        lambda ms: f"tuned on {name} ({ms:.4f} ms forward with gradients + backward at "
                                   f"{rows} x {width})")
