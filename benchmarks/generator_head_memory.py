"""Peak memory of the generator head's designs at ELECTRA's reference sizes, measured on the CPU.

    TRITON_INTERPRET=1 python benchmarks/generator_head_memory.py --out DIR [--shapes small base large]

For each shape (M = batch * P slots of ELECTRA small / base / large at L = 128 with the paper's batch sizes,
V = 30522, the preset's E; fp32 inputs) one forward + backward of each implementation runs under
``torch.profiler`` with ``profile_memory=True``; the CPU allocator reports every allocation and free, and the
peak of its running total above the inputs is the op's memory (activations it saves, its temporaries, its
gradients).

* electra_fast fused / chunked: ``ef.generator_loss_and_sample(strategy=...)`` on the Triton path with its
  Triton launches stubbed out (at these sizes the interpreter would take hours; a Triton kernel allocates
  nothing itself, so every byte the design uses is still allocated by its launchers and its torch code, which
  run for real: the chunked design's GEMMs included) and the launchers' GPU geometry (132 SMs).
* torch_eager: F.linear + F.cross_entropy + a Gumbel-max sample of the materialised logits.
* linear_cross_entropy+sample: torch's F.linear_cross_entropy plus the separate no-grad logits pass that
  sampling needs.

Every implementation's dW is [V, E] and its dh [M, E] (the gradients themselves, included in every row).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TRITON_INTERPRET", "1")  # the Triton path on CPU tensors (launches are stubbed below)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench_generator_head import (  # noqa: E402  (the timed suite's implementations, measured here for memory)
    electra_fast_chunked,
    electra_fast_fused,
    linear_cross_entropy_and_sample,
    torch_eager,
)
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from electra_fast.fused.generator_head_strategy import default_chunk_rows  # noqa: E402
from electra_fast.workcount.problems import PAPER_BATCH, VOCAB, problems  # noqa: E402
from electra_fast.workcount.runs import gpu_launch  # noqa: E402

EAGER_LIMIT_BYTES = 6 << 30  # the baselines' [M, V] logits beyond this do not fit this 24 GiB machine thrice


def shape(name: str) -> tuple[int, int]:
    """(M, E) of ELECTRA ``name`` at L = 128 with the paper's batch, as ``electra-fast inspect`` counts it."""
    problem = next(p for p in problems("full") if p.name.startswith(f"{name}-L128-"))
    return problem.batch * problem.masked, problem.embedding


class _NoLaunch:
    """Stands in for a @triton.jit kernel: ``kernel[grid](...)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def stubbed_triton_launches():
    """Kernel launches do nothing; launchers choose their tiles and vocabulary splits as on a GPU (the splits
    size the forward's partial results)."""
    from electra_fast.kernels import generator_head, generator_head_chunked

    names = [(generator_head, "generator_head_forward_kernel"), (generator_head, "generator_head_backward_kernel"),
             (generator_head_chunked, "chunk_epilogue_kernel")]
    saved = [(module, name, getattr(module, name)) for module, name in names]
    for module, name in names:
        setattr(module, name, _NoLaunch())
    try:
        with gpu_launch():
            yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def peak_bytes(fn, inputs) -> int:
    """Peak of the CPU allocator's running total during fn's forward + backward, above what it started with."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss, _ = fn(*inputs)
        loss.backward()
        del loss
    with tempfile.TemporaryDirectory() as folder:
        trace = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(trace)
        with open(trace) as handle:
            events = json.load(handle)["traceEvents"]
    memory = sorted((e for e in events if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0),
                    key=lambda e: e["ts"])
    totals = [0]
    for event in memory:  # allocations (+) and frees (-) in time order
        totals.append(totals[-1] + event["args"]["Bytes"])
    return max(totals)


def measure(name: str) -> list[dict]:
    rows, width = shape(name)
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(rows, width, generator=generator).requires_grad_()
    weight = (torch.randn(VOCAB, width, generator=generator) * width**-0.5).requires_grad_()
    bias = torch.zeros(VOCAB, requires_grad=True)
    targets = torch.randint(0, VOCAB, (rows,), generator=generator)
    weights = torch.ones(rows)
    inputs = (hidden, weight, bias, targets, weights)
    logits_bytes = rows * VOCAB * 4
    impls = {"electra_fast fused": electra_fast_fused, "electra_fast chunked": electra_fast_chunked,
             "torch_eager": torch_eager}
    if hasattr(F, "linear_cross_entropy"):
        impls["linear_cross_entropy+sample"] = linear_cross_entropy_and_sample
    results = []
    for impl, fn in impls.items():
        if not impl.startswith("electra_fast") and logits_bytes > EAGER_LIMIT_BYTES:
            results.append({"shape": name, "impl": impl, "peak_bytes": None,
                            "note": f"not run: its {logits_bytes / 2**30:.1f} GiB logits exceed this machine"})
            continue
        for leaf in (hidden, weight, bias):
            leaf.grad = None
        start = time.perf_counter()
        context = stubbed_triton_launches() if impl.startswith("electra_fast") else contextlib.nullcontext()
        with context:
            peak = peak_bytes(fn, inputs)
        print(f"{name} {impl}: {peak / 2**20:.0f} MiB ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
        results.append({"shape": name, "impl": impl, "peak_bytes": peak})
    for row in results:
        row.update(M=rows, V=VOCAB, E=width, logits_bytes=logits_bytes, chunk_rows=default_chunk_rows(rows),
                   gradients_bytes=(rows * width + VOCAB * width + VOCAB) * 4)
    return results


def write_markdown(rows: list[dict], path: str) -> None:
    lines = ["# Generator head: peak memory of one forward + backward, measured on the CPU", "",
             "fp32, V = 30522, L = 128, paper batches; M = batch x P slots. 'peak' is the CPU allocator's running "
             "total above the inputs (torch.profiler, profile_memory=True); electra_fast's Triton launches are "
             "stubbed (they allocate nothing), everything else runs. 'gradients' is dh + dW + db, which every "
             "implementation returns; 'logits' is one fp32 [M, V] tensor, for scale. Regenerate with "
             "`python benchmarks/generator_head_memory.py --out DIR`.", "",
             "| shape | M | E | impl | peak MiB | peak - gradients MiB | logits MiB | chunk rows |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.0f}"
        extra = "-" if r["peak_bytes"] is None else f"{(r['peak_bytes'] - r['gradients_bytes']) / 2**20:.0f}"
        impl = r["impl"] + (f" ({r['note']})" if r.get("note") else "")
        lines.append(f"| {r['shape']} | {r['M']} | {r['E']} | {impl} | {peak} | {extra} | "
                     f"{r['logits_bytes'] / 2**20:.0f} | {r['chunk_rows']} |")
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--shapes", nargs="+", default=["small", "base", "large"], choices=list(PAPER_BATCH))
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rows = [row for name in args.shapes for row in measure(name)]
    with open(os.path.join(args.out, "memory.json"), "w") as handle:
        json.dump(rows, handle, indent=1)
    write_markdown(rows, os.path.join(args.out, "memory.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
