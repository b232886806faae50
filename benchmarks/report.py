"""Tables and plots of measured rows: pytest-benchmark JSON files, or the rows file of benchmarks/gpu_check.sh.

    python benchmarks/report.py [RESULTS.json ...] [--rows ROWS.jsonl] --out DIR [--no-plots] [--inspect FILE]

Writes ``benchmarks.md`` (and ``benchmarks.png``, ``profile.png`` unless --no-plots) in DIR. From a rows file
(benchmarks/rows.py) it also tabulates the stages' status, the machine and its measured peaks, the tests' outcomes
and the step profile. For each (op, shape) the fastest implementation is bold and every row shows its speed-up
against the ``baseline`` implementation measured in the same run. Where a "machine" row holds measured peaks,
every row with FLOPs or bytes gets its share of them and its time over the roofline lower bound
max(FLOPs / measured matmul FLOP/s, bytes / measured copy bandwidth). Needs no torch (matplotlib for plots).
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter, defaultdict

from rows import read

KERNEL_ROWS_SHOWN = 8  # per profiled shape, beside the sums per fused op


def load_rows(paths: list[str]) -> list[dict]:
    """Timing rows of every benchmark with electra-fast's extra info, from pytest-benchmark JSON files."""
    rows = []
    for path in paths:
        with open(path) as handle:
            for bench in json.load(handle)["benchmarks"]:
                info = bench.get("extra_info", {})
                if "op" in info:
                    rows.append(dict(info, kind="timing", name=bench["name"], median_s=bench["stats"]["median"]))
    return rows


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def _rate(row, key):
    return row[key] / row["median_s"] if row.get(key) else None


def _share(rate, peak):
    return 100 * rate / peak if rate and peak else None


def roofline_seconds(row: dict, machine: dict | None) -> float | None:
    if not machine or not (row.get("flops") or row.get("bytes_moved")):
        return None
    return max((row.get("flops") or 0) / (machine["matmul_tflops"] * 1e12),
               (row.get("bytes_moved") or 0) / (machine["copy_gbps"] * 1e9))


def stage_table(stages: list[dict]) -> list[str]:
    lines = ["## Stages", "", "| stage | status | seconds | budget s |", "|---|---|---|---|"]
    lines += [f"| {s['stage']} | {s['status']} | {s['seconds']} | {s['budget_s']} |" for s in stages]
    return lines + [""]


def machine_lines(machine: dict) -> list[str]:
    versions = ", ".join(f"{name} {machine.get(name)}" for name in ("python", "torch", "triton", "transformers"))
    return ["## Machine", "", f"device: {machine['device']}; {versions}", "",
            f"Measured peaks (every roofline below uses these): {machine['matmul_dtype']} matrix products "
            f"{machine['matmul_tflops']:.4g} TFLOP/s, device-to-device copy {machine['copy_gbps']:.4g} GB/s "
            "(bytes read + written).", ""]


def test_lines(tests: list[dict]) -> list[str]:
    counts = Counter(t["outcome"] for t in tests)
    lines = ["## Correctness (tests -m gpu_check)", "",
             ", ".join(f"{counts[o]} {o}" for o in ("passed", "failed", "skipped")), "",
             "| test | outcome | seconds |", "|---|---|---|"]
    for t in tests:
        outcome = f"**{t['outcome']}**: {t.get('message', '')}" if t["outcome"] == "failed" else t["outcome"]
        lines.append(f"| {t['test']} | {outcome} | {t['seconds']:.2f} |")
    return lines + [""]


def timing_lines(rows: list[dict], machine: dict | None) -> list[str]:
    by_op = defaultdict(list)
    for row in rows:
        by_op[row["op"]].append(row)
    lines = []
    for op, op_rows in by_op.items():
        lines += [f"## {op}", "", f"device: {op_rows[0].get('device')}", "",
                  "| shape | impl | median ms | speed-up vs slowest | time / baseline's | TFLOP/s | % of matmul peak "
                  "| GB/s | % of copy peak | time / roofline | tokens/s | sequences/s | peak MiB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
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
                if r.get("sdpa_backend"):
                    impl += f" ({r['sdpa_backend']})"
                # On the CPU the step benchmark measures a fresh process's peak RSS instead of CUDA's peak.
                peak = r.get("peak_rss_bytes", r.get("peak_memory_bytes"))
                flops_per_s, bytes_per_s = _rate(r, "flops"), _rate(r, "bytes_moved")
                bound = roofline_seconds(r, machine)
                lines.append(
                    f"| {shape} | {impl} | {r['median_s'] * 1e3:.3f} | {slowest / r['median_s']:.2f}x | {ratio} | "
                    f"{_fmt(flops_per_s and flops_per_s / 1e12, '.3g')} "
                    f"| {_fmt(_share(flops_per_s, machine and machine['matmul_tflops'] * 1e12), '.0f')} "
                    f"| {_fmt(bytes_per_s and bytes_per_s / 1e9, '.3g')} "
                    f"| {_fmt(_share(bytes_per_s, machine and machine['copy_gbps'] * 1e9), '.0f')} "
                    f"| {_fmt(bound and r['median_s'] / bound, '.2f')} | {_fmt(_rate(r, 'tokens'), '.0f')} "
                    f"| {_fmt(_rate(r, 'sequences'), '.1f')} | {_fmt(peak and peak / 2**20, '.1f')} |"
                )
        lines.append("")
    return lines


def profile_lines(profile: list[dict]) -> list[str]:
    lines = ["## Share of one electra-fast step per fused op (torch.profiler: CUDA time per kernel; CPU: self time "
             "per op)", ""]
    by_shape = defaultdict(list)
    for row in profile:
        by_shape[row["shape"]].append(row)
    for shape, rows in by_shape.items():
        total = sum(r["seconds"] for r in rows)
        per_op = Counter()
        for r in rows:
            per_op[r["fused_op"]] += r["seconds"]
        lines += [f"{shape} ({rows[0].get('device')}): {total * 1e3:.2f} ms of kernel time", "",
                  "| fused op | ms | share |", "|---|---|---|"]
        lines += [f"| {op} | {s * 1e3:.3f} | {100 * s / total:.1f} % |" for op, s in per_op.most_common()]
        lines += ["", "| kernel | fused op | ms | share |", "|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: -r["seconds"])[:KERNEL_ROWS_SHOWN]:
            lines.append(f"| `{r['kernel'][:90]}` | {r['fused_op']} | {r['seconds'] * 1e3:.3f} "
                         f"| {100 * r['seconds'] / total:.1f} % |")
        lines.append("")
    return lines


def write_report(rows: list[dict], out_dir: str) -> str:
    kinds = defaultdict(list)
    for row in rows:
        kinds[row.get("kind", "timing")].append(row)
    machine = kinds["machine"][-1] if kinds["machine"] else None
    lines = []
    if kinds["stage"]:
        lines += stage_table(kinds["stage"])
    if machine:
        lines += machine_lines(machine)
    if kinds["test"]:
        lines += test_lines(kinds["test"])
    lines += timing_lines(kinds["timing"], machine)
    if kinds["profile"]:
        lines += profile_lines(kinds["profile"])
    text = "\n".join(lines)
    with open(os.path.join(out_dir, "benchmarks.md"), "w") as handle:
        handle.write(text)
    return text


def write_plots(rows: list[dict], out_dir: str) -> list[str]:
    """benchmarks.png: median time per implementation and shape, one panel per op; profile.png: the step's
    share per fused op, one bar per profiled shape."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    by_op = defaultdict(list)
    for row in rows:
        if row.get("kind", "timing") == "timing":
            by_op[row["op"]].append(row)
    if by_op:
        fig, axes = plt.subplots(len(by_op), 1, figsize=(10, 3.6 * len(by_op)), squeeze=False)
        for ax, (op, op_rows) in zip(axes[:, 0], by_op.items()):
            shapes = list(dict.fromkeys(r["shape"] for r in op_rows))
            impls = list(dict.fromkeys(r["impl"] for r in op_rows))
            width = 0.8 / len(impls)
            for i, impl in enumerate(impls):
                times = {r["shape"]: r["median_s"] * 1e3 for r in op_rows if r["impl"] == impl}
                xs = [j + i * width for j, s in enumerate(shapes) if s in times]
                ax.bar(xs, [times[s] for s in shapes if s in times], width, label=impl)
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))])
            ax.set_xticklabels(shapes, rotation=10, ha="right", fontsize=7)
            ax.set_ylabel("median ms (lower is better)")
            ax.set_yscale("log")
            ax.set_title(f"{op} ({op_rows[0].get('device')})")
            ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(os.path.join(out_dir, "benchmarks.png"))
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    shares = defaultdict(Counter)
    for row in rows:
        if row.get("kind") == "profile":
            shares[row["shape"]][row["fused_op"]] += row["seconds"]
    if shares:
        ops = sorted({op for counter in shares.values() for op in counter})
        fig, ax = plt.subplots(figsize=(8, 1.5 + 0.6 * len(shares)))
        for y, (shape, counter) in enumerate(shares.items()):
            total, left = sum(counter.values()), 0.0
            for i, op in enumerate(ops):
                share = 100 * counter[op] / total
                ax.barh(y, share, left=left, color=f"C{i}", label=op if y == 0 else None)
                left += share
        ax.set_yticks(range(len(shares)))
        ax.set_yticklabels(list(shares), fontsize=8)
        ax.set_xlabel("% of one electra-fast step's kernel time")
        ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.25))
        fig.tight_layout()
        paths.append(os.path.join(out_dir, "profile.png"))
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="*", help="pytest-benchmark JSON files")
    parser.add_argument("--rows", metavar="JSONL", help="a rows file (benchmarks/rows.py), as gpu_check.sh writes")
    parser.add_argument("--out", default=None)
    parser.add_argument("--no-plots", action="store_true", help="the markdown alone (no matplotlib)")
    parser.add_argument("--inspect", metavar="JSON", help="also tabulate an `electra-fast inspect --json` report")
    args = parser.parse_args(argv)
    first = (args.results or [args.rows or args.inspect or "."])[0]
    out_dir = args.out or os.path.dirname(os.path.abspath(first))
    os.makedirs(out_dir, exist_ok=True)
    if args.inspect:
        with open(args.inspect) as handle:
            print(write_inspect_table(json.load(handle), out_dir))
    rows = load_rows(args.results) + (read(args.rows) if args.rows and os.path.exists(args.rows) else [])
    if not rows:
        return
    print(write_report(rows, out_dir))
    if not args.no_plots:
        write_plots(rows, out_dir)


if __name__ == "__main__":
    main()
