"""``electra-fast inspect``'s records (counts, minimums and models per kernel, pass and shape), its table and its
command-line arguments."""

from __future__ import annotations

import json
import os
from dataclasses import asdict

from ..backend import rerun_with_interpreter
from .model import aot_figures, aot_rows, compiled_figures, roofline_seconds
from .problems import MINIMUM, problems
from .runs import KERNELS, scaled_counts


def records(which: str = "small", aot: list[dict] | None = None, kernels=tuple(KERNELS)) -> list[dict]:
    aot = aot if aot is not None else []
    out = []
    for p in problems(which):
        for kernel in kernels:
            counts = scaled_counts(kernel, p)
            minimum = MINIMUM[kernel](p)
            for name, c in counts.items():
                figures = [aot_figures(launch, aot) for launch in c["launches"]]
                hopper = compiled_figures(c["launches"], aot, "sm_90a")
                min_flops, min_bytes = minimum[name]
                out.append({
                    "kernel": kernel, "pass": name, "shape": p.name, "flops": c["flops"], "min_flops": min_flops,
                    "bytes": c["bytes"], "min_bytes": min_bytes,
                    # a pass of several launches reports the largest figure of any of them (sm_90a), and the
                    # lowest occupancy; "sm_80" holds the same for the A100
                    "registers": hopper["registers"], "spills": hopper["spills"],
                    "shared_bytes": hopper["shared_bytes"], "occupancy": hopper["occupancy"],
                    "sm_80": compiled_figures(c["launches"], aot, "sm_80"),
                    "out_of_bounds": c["out_of_bounds"],
                    "launches": [launch.kernel for launch in c["launches"]],
                    "aot_configs": [f["kernel"] if f else None for f in figures],
                    "roofline_min_s": roofline_seconds(min_flops, min_bytes),
                    "roofline_kernel_s": roofline_seconds(c["flops"], c["bytes"]),
                    "problem": asdict(p),
                })
    return out


def ratio(value, minimum) -> str:
    return f"{value / minimum:.2f}" if minimum else "-"


def shown(fraction) -> str:
    return "-" if fraction is None else f"{fraction:.2f}"


def format_table(rows: list[dict]) -> str:
    header = (f"{'kernel':<24}{'pass':<9}{'shape':<18}{'GFLOP':>11}{'x min':>7}{'MB':>13}{'x min':>8}{'regs':>6}"
              f"{'spill':>6}{'smem':>7}{'occ':>6}{'OOB':>5}{'H100 model us':>15}")
    lines = [header]
    for r in rows:
        lines.append(
            f"{r['kernel']:<24}{r['pass']:<9}{r['shape']:<18}"
            f"{r['flops'] / 1e9:>11.2f}{ratio(r['flops'], r['min_flops']):>7}"
            f"{r['bytes'] / 1e6:>13.2f}{ratio(r['bytes'], r['min_bytes']):>8}{str(r['registers']):>6}"
            f"{str(r['spills']):>6}{str(r['shared_bytes']):>7}{shown(r['occupancy']):>6}{r['out_of_bounds']:>5}"
            f"{r['roofline_min_s']['H100'] * 1e6:>15.1f}")
    lines.append("x min: counted / least the op needs. 'H100 model us': roofline lower bound of the op's minimum "
                 "work from data-sheet peaks (a model, not a measurement). regs/spill/smem: AOT sm_90a; occ: "
                 "resident warps / 64 from those figures (a model; the JSON has sm_80 too).")
    return "\n".join(lines)


def run_inspect(args) -> int:
    if os.environ.get("TRITON_INTERPRET") != "1":  # counting needs the interpreter, set before Triton loads
        return rerun_with_interpreter(args)
    rows = records(args.shapes, aot_rows(args.aot))
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)
    return 1 if any(r["out_of_bounds"] for r in rows) else 0


def add_parser(commands) -> None:
    what = ("count each kernel's FLOPs, bytes and out-of-bounds accesses in the interpreter, beside the op's "
            "minimum and a roofline model")
    parser = commands.add_parser(
        "inspect", help=what,
        description=f"{what[0].upper()}{what[1:]}: runs every Triton kernel once under the Triton interpreter "
        "(no GPU needed), with registers, spills and occupancy from an ahead-of-time compile, and prints a table.")
    parser.add_argument("--json", help="write the records here")
    parser.add_argument("--shapes", choices=("small", "full"), default="small",
                        help="small: one tiny shape (seconds); full: ELECTRA small/base/large at L=128 and 512")
    parser.add_argument("--aot", help="an existing `python -m electra_fast.aot --json` report (else compiled now)")
    parser.set_defaults(handler=run_inspect)
