"""Turn a pytest-benchmark JSON file into markdown tables and plots, one table and one plot per op.

    python benchmarks/report.py RESULTS.json [MORE.json ...] --out DIR [--roofline GPU] [--inspect INSPECT.json]

For each (op, shape) the fastest implementation is bold and every row shows its speed-up against the
``baseline`` implementations measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict

from common import PEAK_BANDWIDTH_GBPS


def load_rows(paths: list[str]) -> list[dict]:
    """Rows of every benchmark with electra-fast's extra info, from one or more pytest-benchmark JSON files."""
    benchmarks = []
    for path in paths:
        with open(path) as handle:
            benchmarks += json.load(handle)["benchmarks"]
    rows = []
    for bench in benchmarks:
        info = bench.get("extra_info", {})
        if "op" not in info:
            continue
        median = bench["stats"]["median"]
        row = dict(info, name=bench["name"], median_s=median)
        row["tflops"] = info["flops"] / median / 1e12 if info.get("flops") else None
        row["gbps"] = info["bytes_moved"] / median / 1e9 if info.get("bytes_moved") else None
        row["tokens_per_s"] = info["tokens"] / median if info.get("tokens") else None
        # On the CPU the step benchmark measures a fresh process's peak RSS instead of CUDA's allocator peak.
        if info.get("peak_rss_bytes") is not None:
            row["peak_memory_bytes"] = info["peak_rss_bytes"]
        rows.append(row)
    return rows


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def write_tables(rows: list[dict], out_dir: str) -> str:
    by_op = defaultdict(list)
    for row in rows:
        by_op[row["op"]].append(row)
    lines = []
    for op, op_rows in sorted(by_op.items()):
        lines += [f"## {op}", "", f"device: {op_rows[0].get('device')}", "",
                  "| shape | impl | median ms | speed-up vs slowest | time / baseline's | TFLOP/s | GB/s "
                  "| % of HBM peak | tokens/s | peak MiB |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        by_shape = defaultdict(list)
        for row in op_rows:
            by_shape[row["shape"]].append(row)
        for shape, shape_rows in by_shape.items():
            slowest = max(r["median_s"] for r in shape_rows)
            fastest = min(r["median_s"] for r in shape_rows)
            by_impl = {r["impl"]: r["median_s"] for r in shape_rows}
            for r in sorted(shape_rows, key=lambda r: r["median_s"]):
                # A row may name the implementation it replaces (extra_info "baseline"), measured in the same run.
                base = by_impl.get(r.get("baseline"))
                ratio = f"{r['median_s'] / base:.2f} x {r['baseline']}" if base else "-"
                impl = f"**{r['impl']}**" if r["median_s"] == fastest else r["impl"]
                peak = r.get("peak_memory_bytes")
                pct = 100 * r["gbps"] / PEAK_BANDWIDTH_GBPS if r.get("gbps") and r.get("device") != "cpu" else None
                lines.append(
                    f"| {shape} | {impl} | {r['median_s'] * 1e3:.3f} | {slowest / r['median_s']:.2f}x | {ratio} | "
                    f"{_fmt(r['tflops'], '.1f')} | {_fmt(r['gbps'], '.3g')} | {_fmt(pct, '.0f')} | "
                    f"{_fmt(r['tokens_per_s'], '.0f')} | "
                    f"{_fmt(peak / 2**20 if peak is not None else None, '.1f')} |"
                )
        lines.append("")
    text = "\n".join(lines)
    with open(os.path.join(out_dir, "benchmarks.md"), "w") as handle:
        handle.write(text)
    return text


def write_plots(rows: list[dict], out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_op = defaultdict(list)
    for row in rows:
        by_op[row["op"]].append(row)
    paths = []
    for op, op_rows in sorted(by_op.items()):
        shapes = list(dict.fromkeys(r["shape"] for r in op_rows))
        impls = list(dict.fromkeys(r["impl"] for r in op_rows))
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(shapes)), 4))
        width = 0.8 / len(impls)
        for i, impl in enumerate(impls):
            times = {r["shape"]: r["median_s"] * 1e3 for r in op_rows if r["impl"] == impl}
            xs = [j + i * width for j, s in enumerate(shapes) if s in times]
            ax.bar(xs, [times[s] for s in shapes if s in times], width, label=impl)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))])
        ax.set_xticklabels(shapes, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("median time (ms, lower is better)")
        ax.set_yscale("log")
        ax.set_title(f"{op} ({op_rows[0].get('device')})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{op}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write_inspect_table(records: list[dict], out_dir: str) -> str:
    """The work counted by ``electra-fast inspect --json`` (interpreter counts, minimums, AOT sm_90a figures and
    a roofline model) as a markdown table, written to ``inspect.md``."""
    lines = ["## Work per launch (counted in the Triton interpreter; roofline is a model, not a measurement)", "",
             "| kernel | pass | shape | GFLOP | / min | MB | / min | regs | spills | smem B | occupancy sm_90a "
             "| sm_80 (regs, occupancy) | OOB lanes | model us A100 | H100 | H200 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        flops_ratio = _fmt(r["flops"] / r["min_flops"] if r["min_flops"] else None, ".2f")
        model = r.get("roofline_min_s", {})
        ampere = r.get("sm_80") or {}
        lines.append(
            f"| {r['kernel']} | {r['pass']} | {r['shape']} | {r['flops'] / 1e9:.2f} | {flops_ratio} "
            f"| {r['bytes'] / 1e6:.1f} | {r['bytes'] / r['min_bytes']:.2f} | {r['registers']} | {r['spills']} "
            f"| {r['shared_bytes']} | {_fmt(r.get('occupancy'), '.2f')} "
            f"| {ampere.get('registers')}, {_fmt(ampere.get('occupancy'), '.2f')} | {r['out_of_bounds']} | "
            + " | ".join(_fmt(model[gpu] * 1e6 if gpu in model else None, ".1f") for gpu in ("A100", "H100", "H200"))
            + " |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "inspect.md"), "w") as handle:
        handle.write(text)
    return text


def roofline_table(rows: list[dict], gpu: str) -> str:
    """Each measured median beside the roofline lower bound of its FLOPs and bytes on ``gpu`` (data-sheet peaks,
    electra_fast.inspect.PEAKS; a model, not a measurement)."""
    from electra_fast.inspect import PEAKS

    name = next((known for known in PEAKS if known in gpu.upper()), None)
    if name is None:
        return f"no data-sheet peaks for {gpu!r} (known: {', '.join(PEAKS)})"
    peak_flops, bandwidth = PEAKS[name]
    lines = [f"## Measured vs roofline lower bound on {name} (model: max(FLOPs / {peak_flops:.3g}, "
             f"bytes / {bandwidth:.3g}))", "", "| op | shape | impl | median ms | model ms | median / model |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        bound = max((r.get("flops") or 0) / peak_flops, (r.get("bytes_moved") or 0) / bandwidth)
        lines.append(f"| {r['op']} | {r['shape']} | {r.get('impl', r['name'])} | {r['median_s'] * 1e3:.3f} "
                     f"| {_fmt(bound * 1e3 if bound else None, '.3f')} "
                     f"| {_fmt(r['median_s'] / bound if bound else None, '.1f')} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="*", help="pytest-benchmark JSON files")
    parser.add_argument("--out", default=None)
    parser.add_argument("--roofline", metavar="GPU", help="also print each median beside this GPU's roofline bound")
    parser.add_argument("--inspect", metavar="JSON", help="also tabulate an `electra-fast inspect --json` report")
    args = parser.parse_args(argv)
    out_dir = args.out or os.path.dirname(os.path.abspath((args.results or [args.inspect or "."])[0]))
    os.makedirs(out_dir, exist_ok=True)
    if args.inspect:
        with open(args.inspect) as handle:
            print(write_inspect_table(json.load(handle), out_dir))
    if not args.results:
        return
    rows = load_rows(args.results)
    print(write_tables(rows, out_dir))
    write_plots(rows, out_dir)
    if args.roofline:
        text = roofline_table(rows, args.roofline)
        print(text)
        with open(os.path.join(out_dir, "roofline.md"), "w") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
