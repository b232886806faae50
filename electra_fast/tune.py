"""Choose the tile table's entries (kernels/tiles.py, docs/design.md §7.5): pruned on the CPU, timed on a GPU.

``python -m electra_fast.tune prune [--out DIR]`` (CPU, TRITON_INTERPRET unset) compiles every candidate of
``CANDIDATES`` for sm_80 and sm_90a through the launchers (electra_fast.aot: the JIT's specialisation at the
base shape), drops those that fail a check (the Triton tutorial's rule on sm_90, a spill, shared memory over
the limit, no wgmma in the loop on sm_90a, no asynchronous copy in the loop), ranks the rest with ``model_cost``
and writes the winners into the table (bf16's winner serves fp16 too: the two compile the same instructions with
another MMA type), the survivors into ``tile_candidates.json`` beside it, and every candidate with the check it
failed into DIR. Entries for other head dims keep their hand-picked tiles. ``prune-head`` does the same for the
generator head (electra_fast.tune_head).

``electra-fast tune`` (GPU only) times every surviving candidate of this GPU's table architecture on the real
kernels (attention's and the generator head's, electra_fast.tune_head) and rewrites the table with the fastest.
Nothing tunes during training: launchers only read the table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

import torch

from . import tune_head
from .tune_machines import (
    MACHINES,
    PHILOX_MULTIPLIES,
    SHARED_CAP,
    TABLE_ARCH,
    record_lines,
    resident_programs,
    time_into_table,
)

# The shape the model ranks and tune times: ELECTRA-Base at the GPU check's 16 x 512, hidden size 768 (12 heads
# of 64; 6 of 128 for the 128 head-dim family).
SHAPE = dict(batch=16, length=512, hidden=768)
PRUNED_DTYPE = "bf16"
HEAD_DIMS = (64, 128)  # pruned; the 16 and 32 families keep hand-picked tiles
# Candidates per kernel: the block a program owns and the block its loop streams ("own" is BLOCK_M for forward
# and dq, BLOCK_N for dk/dv), in the ranges of the Triton tutorial 06-fused-attention.
# Head dim 128 is no ELECTRA shape: its range is narrower (an own block of 64, 2 or 3 stages) to keep the CPU
# pruning short.
CANDIDATES = {64: dict(own=(64, 128), streamed=(32, 64, 128), num_warps=(4, 8), num_stages=(2, 3, 4, 5)),
              128: dict(own=(64,), streamed=(32, 64), num_warps=(4, 8), num_stages=(2, 3))}
KERNELS = ("forward", "dq", "dkdv")
OWN_IS_M = {"forward": True, "dq": True, "dkdv": False}
# Per kernel: tl.dot calls per loop step, tensors streamed per step, exp2 per score.
WORK = {"forward": (2, 2), "dq": (3, 2), "dkdv": (4, 2)}


def candidates(kernel: str, arch: str, head_dim: int = 64):
    """(tiles, reason it was dropped before compiling or None) for every candidate, in a fixed order."""
    ranges = CANDIDATES[head_dim]
    for own in ranges["own"]:
        for streamed in ranges["streamed"]:
            for warps in ranges["num_warps"]:
                for stages in ranges["num_stages"]:
                    block_m, block_n = (own, streamed) if OWN_IS_M[kernel] else (streamed, own)
                    tiles = dict(block_m=block_m, block_n=block_n, num_warps=warps, num_stages=stages)
                    reason = None
                    if kernel == "forward" and arch == "sm_90" and warps == 8 and block_m * block_n < 128 * 128:
                        reason = "tutorial rule: 8 warps on BM*BN < 128*128 on sm_90 (forward)"
                    yield tiles, reason


def model_cost(kernel: str, arch: str, tiles: dict, row: dict, dropout: bool, head_dim: int) -> float:
    """Estimated cycles of one launch at SHAPE (a model, not a measurement; docs/design.md §7.5). Programs run
    in waves of (SMs x programs resident per SM); the programs resident on one SM share its tensor cores, L2
    bandwidth and special-function units, so a wave takes loop steps x the resident programs' summed work per
    step, or the load latency divided by the stages in flight, whichever is longer."""
    m = MACHINES[arch]
    own, streamed = ((tiles["block_m"], tiles["block_n"]) if OWN_IS_M[kernel] else
                     (tiles["block_n"], tiles["block_m"]))
    d, length = head_dim, SHAPE["length"]
    programs = math.ceil(length / own) * SHAPE["batch"] * (SHAPE["hidden"] // head_dim)
    resident = resident_programs(arch, row["registers"], row["shared_bytes"], tiles["num_warps"])
    if resident == 0:
        return math.inf
    waves = math.ceil(programs / (m["sms"] * resident))
    dots, streams = WORK[kernel]
    scores = own * streamed
    work = (dots * 2 * scores * d / m["mma"] + streams * streamed * d * 2 / m["l2"] + scores / m["mufu"]
            + (scores * PHILOX_MULTIPLIES / m["imul"] if dropout else 0.0))
    step = max(resident * work, m["latency"] / (tiles["num_stages"] - 1))
    return waves * math.ceil(length / streamed) * step


def _capture(kernel: str, arch: str, tiles_: dict, dtype: str, head_dim: int, dropout: bool):
    """The launch configuration ``kernel`` gets on ``arch`` with ``tiles_``, captured from the launchers."""
    from electra_fast.kernels import attention, registry, tiles

    table_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    name = {"forward": "attention_forward_kernel", "dq": "attention_backward_dq_kernel",
            "dkdv": "attention_backward_dkdv_kernel"}[kernel]
    launches = []
    jit = [attention.attention_forward_kernel, attention.attention_backward_dq_kernel,
           attention.attention_backward_dkdv_kernel]
    with tiles.using({(f"attention.{kernel}", arch, dtype, head_dim, dropout): tiles_}), \
            registry._recording(jit, arch, ("wgmma", "async_copy"), launches):
        attention.representative_launch(table_dtype, head_dim, SHAPE["batch"], SHAPE["length"],
                                        SHAPE["hidden"] // head_dim, dropout)
    (config,) = [c for c in launches if c.name.startswith(name + "[")]
    return config


def prune(out_dir: Path, head_dim: int) -> dict:
    from electra_fast import aot
    from electra_fast.kernels import tiles

    records, survivors, jobs, job_keys = [], {}, [], []
    for arch in tiles.ARCHS:
        for kernel in KERNELS:
            for dropout in (False, True):
                for tiles_, reason in candidates(kernel, arch, head_dim):
                    record = dict(kernel=f"attention.{kernel}", arch=arch, dtype=PRUNED_DTYPE,
                                  head_dim=head_dim, dropout=dropout, **tiles_, failed=reason)
                    records.append(record)
                    if reason is None:
                        config = _capture(kernel, arch, tiles_, PRUNED_DTYPE, head_dim, dropout)
                        jobs.append((config, TABLE_ARCH[arch], aot.specialise(config, TABLE_ARCH[arch])))
                        job_keys.append(record)
    print(f"compiling {len(jobs)} candidates ({len(records) - len(jobs)} dropped by rule)", flush=True)
    for record, row in zip(job_keys, aot.compile_all(jobs)):
        problems = _problems(record, row)
        if "error" not in row:
            record.update(registers=row["registers"], spills=row["spills"], shared_bytes=row["shared_bytes"],
                          hgmma_in_loop=row["hgmma_in_loop"], async_copies_in_loop=row["async_copies_in_loop"])
        record["failed"] = "; ".join(problems) or None
        if record["failed"] is None:
            own_kernel = record["kernel"].split(".")[1]
            tiles_ = {k: record[k] for k in ("block_m", "block_n", "num_warps", "num_stages")}
            record["model_cycles"] = round(model_cost(own_kernel, record["arch"], tiles_, row, record["dropout"],
                                                      head_dim))
            key = (record["kernel"], record["arch"], head_dim, record["dropout"])
            survivors.setdefault(key, []).append(record)
    return _write(records, survivors, out_dir, head_dim)


def _rank(record):
    """Lowest modelled cycles first; ties to fewer registers, then the candidate order (deterministic)."""
    return (record["model_cycles"], record["registers"], record["block_m"], record["block_n"],
            record["num_warps"], record["num_stages"])


def _write(records, survivors, out_dir: Path, head_dim: int) -> dict:
    """The winners into the table (both 16-bit dtypes), the survivors into tile_candidates.json (replacing this
    head dim's), every record into DIR/pruning-d{head_dim}.json."""
    from electra_fast.kernels import tiles

    table = json.loads(tiles.TABLE_PATH.read_text())
    tiles.parse(table, tiles.TABLE_PATH)
    winners = {key: min(found, key=_rank) for key, found in survivors.items()}
    for entry in table["entries"]:
        best = winners.get((entry["kernel"], entry["arch"], entry["head_dim"], entry["dropout"]))
        if best is not None:
            entry.update({k: best[k] for k in ("block_m", "block_n", "num_warps", "num_stages")})
            entry["source"] = (f"cost model over the AOT survivors (bf16, {best['model_cycles']} modelled cycles, "
                               f"{best['registers']} registers)")
    tiles.TABLE_PATH.write_text(tiles.dumps(table))
    candidates_path = tiles.TABLE_PATH.with_name("tile_candidates.json")
    kept = [r for r in (json.loads(candidates_path.read_text()) if candidates_path.exists() else [])
            if r["head_dim"] != head_dim]
    listed = kept + [{k: v for k, v in r.items() if k != "failed"} for _, found in sorted(survivors.items())
                     for r in sorted(found, key=_rank)]
    candidates_path.write_text(record_lines(listed))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"pruning-d{head_dim}.json").write_text(
        record_lines(records))
    return winners


def _problems(record: dict, row: dict) -> list[str]:
    problems = list(row["problems"])
    if "error" not in row and row["shared_bytes"] > SHARED_CAP[record["arch"]]:
        problems.append(f"shared memory {row['shared_bytes']} > {SHARED_CAP[record['arch']]} (table cap)")
    return problems


def verify(out_dir: Path) -> int:
    """Compile the table's pruned winners under this process's Triton (the pruning ran under 3.6); a winner
    that fails a check here gives way to the next survivor in rank order that passes, and leaves the survivors.
    Every failure is written to DIR/verify-<Triton version>.json."""
    import triton

    from electra_fast import aot
    from electra_fast.kernels import tiles

    candidates_path = tiles.TABLE_PATH.with_name("tile_candidates.json")
    found = json.loads(candidates_path.read_text())
    table = json.loads(tiles.TABLE_PATH.read_text())
    tiles.parse(table, tiles.TABLE_PATH)
    groups = {}
    for record in found:
        groups.setdefault((record["kernel"], record["arch"], record["head_dim"], record["dropout"]), []).append(record)
    failures, chosen = [], {}
    for key, ranked in sorted(groups.items(), key=str):
        for record in sorted(ranked, key=_rank):
            kernel, arch = record["kernel"].split(".")[1], record["arch"]
            tiles_ = {k: record[k] for k in ("block_m", "block_n", "num_warps", "num_stages")}
            config = _capture(kernel, arch, tiles_, record["dtype"], record["head_dim"], record["dropout"])
            (row,) = aot.compile_all([(config, TABLE_ARCH[arch], aot.specialise(config, TABLE_ARCH[arch]))])
            problems = _problems(record, row)
            if not problems:
                chosen[key] = record
                break
            failures.append({**{k: record[k] for k in ("kernel", "arch", "head_dim", "dropout")}, **tiles_,
                             "triton": triton.__version__, "failed": "; ".join(problems)})
            found.remove(record)
            print(f"{key} {tiles_}: {'; '.join(problems)} under Triton {triton.__version__}", flush=True)
    for entry in table["entries"]:
        best = chosen.get((entry["kernel"], entry["arch"], entry["head_dim"], entry["dropout"]))
        if best is not None and any(entry[k] != best[k] for k in ("block_m", "block_n", "num_warps", "num_stages")):
            entry.update({k: best[k] for k in ("block_m", "block_n", "num_warps", "num_stages")})
            entry["source"] = (f"cost model over the AOT survivors under Triton 3.6 and {triton.__version__} (bf16, "
                               f"{best['model_cycles']} modelled cycles, {best['registers']} registers)")
    missing = sorted(set(groups) - set(chosen), key=str)
    if missing:
        print(f"no survivor compiles cleanly under Triton {triton.__version__} for {missing}", file=sys.stderr)
        return 1
    tiles.TABLE_PATH.write_text(tiles.dumps(table))
    candidates_path.write_text(record_lines(found))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"verify-{triton.__version__}.json").write_text(
        record_lines(failures))
    return 0


def tune(out: Path | None, kernels: tuple = KERNELS + ("generator_head",), repeats: int = 50) -> int:
    """Time every surviving candidate of this GPU's architecture (attention's ``kernels`` and, if named, the
    generator head's combinations, electra_fast.tune_head) and write the fastest into the table."""
    if not torch.cuda.is_available():
        print("electra-fast tune needs a CUDA GPU: it times the kernels' candidate tiles on the device and "
              "rewrites the tile table (nothing is tuned on the CPU)", file=sys.stderr)
        return 2
    from electra_fast.kernels import attention, tiles

    arch = tiles.table_arch(torch.cuda.get_device_capability())
    name = torch.cuda.get_device_name()
    found = json.loads(tiles.TABLE_PATH.with_name("tile_candidates.json").read_text())
    table = json.loads(tiles.TABLE_PATH.read_text())
    tiles.parse(table, tiles.TABLE_PATH)
    b, length = SHAPE["batch"], SHAPE["length"]
    for (dtype_name, dtype), d in itertools.product((("bf16", torch.bfloat16), ("fp16", torch.float16)), HEAD_DIMS):
        heads = SHAPE["hidden"] // d
        q, k, v, dout = (torch.randn(b, length, heads, d, device="cuda", dtype=dtype).transpose(1, 2)
                         for _ in range(4))
        filled = torch.full((b,), length, device="cuda", dtype=torch.int32)
        bounds = torch.stack([torch.zeros_like(filled), filled, filled, filled])
        bias = torch.zeros(b, length, device="cuda")
        for kernel, dropout in itertools.product([k for k in kernels if k in KERNELS], (False, True)):
            p, seed = (0.1, attention.AOT_SEED) if dropout else (0.0, 0)
            args = (q, k, v, bias, bounds, length, length, d**-0.5, p, seed)
            out, lse = attention.forward(*args)

            def run():
                if kernel == "forward":
                    return attention.forward(*args)
                return attention.backward(dout.transpose(1, 2), q, k, v, out, lse, *args[3:])

            candidates = [{k: record[k] for k in ("block_m", "block_n", "num_warps", "num_stages")}
                          for record in found if (record["kernel"], record["arch"], record["head_dim"],
                                                  record["dropout"]) == (f"attention.{kernel}", arch, d, dropout)]
            time_into_table(table, f"attention.{kernel}", arch, dict(dtype=dtype_name, head_dim=d, dropout=dropout),
                            candidates, run, repeats,
                            lambda ms: f"tuned on {name} ({ms:.4f} ms at {b}x{length}, {heads} heads)")
    if "generator_head" in kernels:
        tune_head.tune(table, arch, name, repeats)
    text = tiles.dumps(table)
    tiles.parse(json.loads(text), "the tuned table")
    (out or tiles.TABLE_PATH).write_text(text)
    print(f"wrote {out or tiles.TABLE_PATH}")
    return 0


def add_parser(commands) -> None:
    what = "time the tile table's candidate configurations on this GPU and rewrite the table (GPU only)"
    detail = __doc__.split("\n\n")[2].replace("\n", " ").replace("``", "")
    parser = commands.add_parser("tune", help=what, description=f"{what[0].upper()}{what[1:]}. {detail}")
    parser.add_argument("--out", type=Path, help="write the table here instead of over the installed one")
    parser.add_argument("--kernels", nargs="+", choices=KERNELS + ("generator_head",),
                        default=list(KERNELS) + ["generator_head"])
    parser.set_defaults(handler=lambda args: tune(args.out, tuple(args.kernels)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    pruning = commands.add_parser("prune", help="prune the candidates on the CPU and write the table")
    pruning.add_argument("--out", type=Path, required=True, help="folder for pruning-d<head dim>.json")
    pruning.add_argument("--head-dim", type=int, choices=HEAD_DIMS, required=True)
    checking = commands.add_parser("verify", help="compile the winners under this Triton; replace those that fail")
    checking.add_argument("--out", type=Path, required=True, help="folder for verify-<Triton version>.json")
    head = commands.add_parser("prune-head", help="prune the generator head's candidates on the CPU under this Triton "
                               "(survivors must also pass the other Triton's record in DIR) and write the table")
    head.add_argument("--out", type=Path, required=True, help="folder for pruning-generator-head-<version>.json")
    add_parser(commands)
    args = parser.parse_args(argv)
    if args.command in ("prune", "verify", "prune-head"):
        from .backend import interpreter_enabled

        if interpreter_enabled():
            print("unset TRITON_INTERPRET to compile kernels", file=sys.stderr)
            return 2
    if args.command == "verify":
        return verify(args.out)
    if args.command == "prune-head":
        winners = tune_head.prune(args.out)
        for arch, best in sorted(winners.items()):
            print(arch, best)
        return 0 if len(winners) == len(MACHINES) else 1
    if args.command == "prune":
        winners = prune(args.out, args.head_dim)
        for key, best in sorted(winners.items()):
            print(key, {k: best[k] for k in ("block_m", "block_n", "num_warps", "num_stages", "model_cycles")})
        return 0
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
