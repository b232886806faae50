"""``electra-fast inspect``: per (kernel, pass, shape) the work each launch does, counted in the Triton interpreter,
beside the least work the op needs, the AOT compile figures for sm_90a and a roofline lower bound (a model).

* Counting (``electra_fast.sanitizer``): tl.dot FLOPs, bytes requested from / stored to global memory, and lanes
  that address memory outside the launch's tensors (must be 0).
* GPU launch geometry: launchers pick other tiles under the interpreter, so counting runs them as on a GPU with
  ``GPU_SMS`` SMs (``gpu_launch_geometry``): GPU tiles, one row per masking program, the generator head's
  vocabulary splits and the RTD backward's row groups of the real shape.
* Scaling: ELECTRA's shapes are far too big for the interpreter. Each kernel has a unit of work that the grid
  repeats (a masking row, an RTD backward row group, an attention (batch, head) pair, and for the generator
  head 64 rows and 128 vocabulary ids); with the per-program geometry fixed, each program's work
  does not depend on how many units there are, so every count is affine in each unit count: counted at two
  values per axis (1 and 2 units; for vocabulary tiles the two fewest that give the real number of splits,
  keeping the last, partial tile) and extrapolated exactly (tests/test_inspect.py checks a third point).
* Minimums: generator head 2*M*V*E FLOPs forward, twice that backward; attention FA2's 4*B*H*L^2*D forward and
  2.5x that backward; bytes: one read of every input and one write of every output of the op (partials that a
  launch writes for the host to reduce count as their reduced size).
* Roofline (a model, not a measurement): seconds >= max(FLOPs / dense bf16 peak, bytes / HBM bandwidth) with
  vendor data-sheet peaks, for the op's minimum work and for the work counted in the kernel.

Tensors are fp16 under the interpreter (the same bytes as the bf16 of training; the interpreter computes bf16
wrongly) and the AOT figures are those of the registered bf16 configuration.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from fractions import Fraction

import torch

from .backend import rerun_with_interpreter

GPU_SMS = 132  # H100 SXM / H200: the SM count the launchers' GPU geometry is computed for
PEAKS = {  # vendor data sheets: dense bf16 FLOP/s, HBM bytes/s
    "A100": (312e12, 2.039e12),  # A100 80GB SXM
    "H100": (989e12, 3.35e12),  # H100 SXM
    "H200": (989e12, 4.8e12),
}
# Per-SM limits for the occupancy model (CUDA programming guide, compute capability 8.0 and 9.0): registers,
# shared memory (each block also takes 1 KiB reserved by the system), resident warps and blocks.
SM_LIMITS = {"sm_80": {"registers": 65536, "shared_bytes": 164 * 1024, "warps": 64, "blocks": 32},
             "sm_90a": {"registers": 65536, "shared_bytes": 228 * 1024, "warps": 64, "blocks": 32}}
PAPER_BATCH = {"small": 128, "base": 256, "large": 2048}  # ELECTRA paper, Table 6 (pre-training batch size)
VOCAB = 30522
HALF = torch.float16  # stands in for bf16: same bytes, computed right by the interpreter
PASSES = {"masking": ("forward",), "generator_head": ("forward", "backward", "fwd+bwd"),
          "generator_head_chunked": ("forward", "backward", "fwd+bwd"), "rtd_loss": ("forward", "backward"),
          "attention": ("forward", "backward")}


@dataclass(frozen=True)
class Problem:
    """One ELECTRA training shape as the four fused ops see it."""

    name: str
    batch: int
    seq_len: int
    hidden: int  # discriminator hidden size: RTD width, attention heads * head_dim
    heads: int
    embedding: int  # generator-head input width (E)
    vocab: int
    mask_prob: float

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def masked(self) -> int:  # P, masked slots per row
        return int((self.mask_prob + 0.005) * self.seq_len)

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len


def problems(which: str) -> list[Problem]:
    """"full": ELECTRA small / base / large at sequence 128 and 512 with the paper's batch sizes; "small": one
    tiny shape (the tiny preset, batch 64: whole generator-head row tiles) that runs in seconds."""
    from .presets import PRESETS

    if which == "small":
        tiny = PRESETS["tiny"]
        return [Problem("tiny-L128-B64", 64, 128, tiny.hidden_size, tiny.num_heads, tiny.embedding_size, VOCAB,
                        tiny.mask_prob)]
    return [Problem(f"{size}-L{seq_len}-B{PAPER_BATCH[size]}", PAPER_BATCH[size], seq_len, preset.hidden_size,
                    preset.num_heads, preset.embedding_size, VOCAB, preset.mask_prob)
            for size, preset in ((name, PRESETS[name]) for name in ("small", "base", "large"))
            for seq_len in (128, 512)]


# --- GPU launch geometry under the interpreter -----------------------------------------------------------------

def gpu_launch_geometry(*, generator_head_split_rows: int | None = None, rtd_groups: int | None = None):
    """Launchers choose tiles and splits as on a ``GPU_SMS``-SM GPU (``registry.gpu_geometry``, the tile table's
    sm_90 entries). ``generator_head_split_rows``: the vocabulary-split choice sees the real rows (a scaled-down
    M splits the vocabulary as the real M does); ``rtd_groups`` caps the RTD backward's row groups (a scaled-down
    N keeps the real rows per group)."""
    from .kernels import registry

    return registry.gpu_geometry(sms=GPU_SMS, arch="sm_90", rtd_backward_groups=rtd_groups,
                                 generator_head_split_rows=generator_head_split_rows)


# --- the four ops: scaling unit, a run of n units, and the minimum work ----------------------------------------

def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def masking_units(p: Problem) -> tuple:
    return (p.batch,)  # one row per program


def run_masking(p: Problem, n: tuple) -> dict:
    from .kernels import masking

    g = _generator()
    rows = n[0]
    ids = torch.randint(200, p.vocab, (rows, p.seq_len), generator=g)  # no special ids
    valid = torch.ones(rows, p.seq_len, dtype=torch.int64)
    from .sanitizer import sanitize

    with gpu_launch_geometry(), sanitize() as forward:
        masking.forward(ids, valid, seed=1, mask_token_id=103, special_ids=[0, 100, 101, 102, 103],
                        vocab_size=p.vocab, mask_prob=p.mask_prob, max_predictions=p.masked, t_mask=0.8,
                        t_random=0.9, use_random=True, bernoulli=False, block_rows=1)
    return {"forward": forward}


def masking_minimum(p: Problem) -> dict:
    rows = p.batch
    io = rows * p.seq_len * (8 + 8 + 8 + 1) + rows * p.masked * (8 + 8 + 4)  # ids, mask, out ids, is_masked; slots
    return {"forward": (0, io)}


def _rtd_geometry(p: Problem) -> tuple[int, int]:
    """(rows per backward group, groups) of the real launch."""
    import triton

    from .kernels import rtd_loss

    row_blocks = triton.cdiv(p.tokens, rtd_loss.BACKWARD_BLOCK_ROWS)
    groups = min(row_blocks, rtd_loss.MAX_BACKWARD_GROUPS)
    rows_per_group = triton.cdiv(row_blocks, groups) * rtd_loss.BACKWARD_BLOCK_ROWS
    return rows_per_group, triton.cdiv(p.tokens, rows_per_group)


def rtd_units(p: Problem) -> tuple:
    rows_per_group, groups = _rtd_geometry(p)
    assert rows_per_group * groups == p.tokens, "scaling is exact only for whole row groups"
    return (groups,)


def run_rtd_loss(p: Problem, n: tuple) -> dict:
    from .kernels import rtd_loss
    from .sanitizer import sanitize

    (n,) = n
    rows = n * _rtd_geometry(p)[0]
    g = _generator()
    projected = torch.randn(rows, p.hidden, generator=g).to(HALF)
    dense_bias, weight = torch.randn(p.hidden, generator=g), torch.randn(p.hidden, generator=g)
    original = torch.randint(0, p.vocab, (rows,), generator=g)
    corrupted = torch.where(torch.rand(rows, generator=g) < 0.15, original + 1, original)
    valid = torch.ones(rows, dtype=torch.uint8)
    with gpu_launch_geometry(rtd_groups=n):
        with sanitize() as forward:
            logits, labels, _, _ = rtd_loss.forward(projected, dense_bias, weight, torch.zeros(1), corrupted,
                                                    original, valid, "gelu")
        with sanitize() as backward:
            rtd_loss.backward(projected, dense_bias, weight, logits, labels, valid, torch.zeros(rows),
                              torch.ones(1), "gelu")
    return {"forward": forward, "backward": backward}


def rtd_minimum(p: Problem) -> dict:
    n, h = p.tokens, p.hidden
    parameters = 2 * h * 4 + 4  # dense bias, prediction weight, prediction bias (fp32)
    forward = n * h * 2 + parameters + n * (8 + 8 + 1) + n * (4 + 1) + 4 + 5 * 4  # -> logits, labels, loss, counts
    backward = (n * h * 2 + parameters + n * (4 + 1 + 1 + 4) + 4  # projected, params, logits, labels, valid, dlogits
                + n * h * 2 + parameters)  # -> d(projected), d(parameters)
    return {"forward": (0, forward), "backward": (0, backward)}


# The generator head's scaling units: 64 rows and 128 vocabulary ids, whole tiles of both passes' GPU tiles.
GENERATOR_ROWS, GENERATOR_VOCAB = 64, 128


def generator_head_units(p: Problem) -> tuple:
    """(row units, vocabulary units). The last vocabulary unit may be partial; scaled runs keep its width."""
    from .kernels import generator_head

    tiles = generator_head.tiles_for_gpu(HALF)
    assert GENERATOR_ROWS % tiles.forward_block_m == 0 and GENERATOR_ROWS % tiles.backward_block_m == 0
    assert GENERATOR_VOCAB % tiles.forward_block_v == 0 and GENERATOR_VOCAB % tiles.backward_block_v == 0
    rows = p.batch * p.masked
    assert rows % GENERATOR_ROWS == 0, "scaling is exact only for whole row units"
    return rows // GENERATOR_ROWS, -(-p.vocab // GENERATOR_VOCAB)


def _generator_head_splits(row_units: int, vocab: int, embedding: int) -> int:
    """Vocabulary splits of the fused forward's real launch with ``row_units`` and ``vocab`` ids."""
    from .kernels import generator_head

    tiles = generator_head.tiles_for_gpu(HALF)
    with gpu_launch_geometry():
        return generator_head._vocab_splits(row_units * GENERATOR_ROWS // tiles.forward_block_m, vocab,
                                            tiles.forward_block_v, None)[0]


def generator_head_probes(p: Problem) -> tuple:
    """Row units 1 and 2, and two vocabulary-unit counts at which the forward's splits grow affinely towards the
    real launch's: each split does a fixed amount of work besides its tiles, so a count is A * tiles + B * splits
    + C. Either one tile per split, as in the real launch (1 and 2 units), or the real number of splits (the two
    fewest such unit counts). Every count is then bilinear in (row units, vocabulary units)."""
    from .kernels import generator_head

    row_units, vocab_units = generator_head_units(p)
    real = _generator_head_splits(row_units, p.vocab, p.embedding)
    if real == -(-p.vocab // generator_head.tiles_for_gpu(HALF).forward_block_v):
        return (1, 2), (1, 2)
    same = [t for t in range(1, vocab_units + 1)
            if _generator_head_splits(row_units, _scaled_vocab(p, t), p.embedding) == real]
    return (1, 2), tuple(same[:2])


def _scaled_vocab(p: Problem, vocab_units: int) -> int:
    last_width = p.vocab - GENERATOR_VOCAB * (-(-p.vocab // GENERATOR_VOCAB) - 1)
    return GENERATOR_VOCAB * (vocab_units - 1) + last_width


def run_generator_head(p: Problem, n: tuple) -> dict:
    row_units, vocab_units = n
    return _run_generator_head(row_units, p.embedding, _scaled_vocab(p, vocab_units), generator_head_units(p)[0])


@functools.lru_cache(maxsize=None)
def _run_generator_head(row_units: int, embedding: int, vocab: int, real_row_units: int) -> dict:
    """The fused design in training: the forward with gradients on, then the backward."""
    from .kernels import generator_head
    from .sanitizer import sanitize

    rows = row_units * GENERATOR_ROWS
    g = _generator()
    hidden = torch.randn(rows, embedding, generator=g).to(HALF)
    weight = (torch.randn(vocab, embedding, generator=g) * 0.05).to(HALF)
    bias = torch.zeros(vocab, dtype=HALF)
    targets = torch.randint(0, vocab, (rows,), generator=g)
    with gpu_launch_geometry(generator_head_split_rows=real_row_units * GENERATOR_ROWS):
        with sanitize(skip_dot_math=True) as forward:
            lse, _, _, _ = generator_head.forward(hidden, weight, bias, targets, temperature=1.0,
                                                  disallow_correct=False, seed=3, compute_grad=True)
        with sanitize(skip_dot_math=True) as backward:
            generator_head.backward(hidden, weight, bias, targets, lse, torch.full((rows,), 1.0 / rows))
    return {"forward": forward, "backward": backward, "fwd+bwd": forward + backward}


def generator_head_minimum(p: Problem) -> dict:
    """Forward: the logits GEMM, reading the inputs once, writing per-row results. Backward: the dh and dW GEMMs
    from the saved inputs, writing the gradients. The fused design does dh's GEMM in its forward: its forward
    shows 2x, its backward 1x, and fwd+bwd is the figure to compare."""
    m, v, e = p.batch * p.masked, p.vocab, p.embedding
    inputs = m * e * 2 + v * e * 2 + v * 2 + m * 8  # hidden, weight, bias, targets
    forward = inputs + m * (4 + 4 + 8)  # -> lse, target logit, sample
    backward = inputs + m * (4 + 4) + m * e * 2 + v * e * 2 + v * 4  # + lse, row scale -> dh, dW, db
    return {"forward": (2 * m * v * e, forward), "backward": (4 * m * v * e, backward),
            "fwd+bwd": (6 * m * v * e, forward + backward - inputs)}


def generator_head_chunked_units(p: Problem) -> tuple:
    return (p.batch * p.masked,)  # one epilogue program per row


def run_generator_head_chunked(p: Problem, n: tuple) -> dict:
    return _run_generator_head_chunked(n[0], p.vocab)


@functools.lru_cache(maxsize=None)
def _run_generator_head_chunked(rows: int, vocab: int) -> dict:
    """The chunked design's Triton epilogue over ``rows`` rows of fp32 logits, forming 16-bit gradients (its
    GEMMs are the library's: ``generator_head_chunked_library_work`` counts them)."""
    from .kernels import generator_head_chunked
    from .sanitizer import sanitize

    g = _generator()
    logits = torch.randn(rows, vocab, generator=g)
    targets = torch.randint(0, vocab, (rows,), generator=g)
    outputs = (torch.empty(rows), torch.empty(rows), torch.empty(rows, dtype=torch.int64))
    with sanitize() as forward:
        generator_head_chunked.forward(logits, targets, torch.full((rows,), 1.0 / rows), *outputs,
                                       grad_logits=torch.empty(rows, vocab, dtype=HALF), temperature=1.0,
                                       disallow_correct=False, seed=3, row_offset=0)
    return {"forward": forward, "backward": [], "fwd+bwd": forward}


def generator_head_chunked_library_work(p: Problem) -> dict:
    """{pass: (FLOPs, bytes)} of what the chunked design runs outside Triton (its GEMMs, bias add, fp32
    accumulation and backward scaling): ``generator_head_strategy.chunked_library_work``, the model the default
    strategy uses."""
    from .fused.generator_head_strategy import chunked_library_work, default_chunk_rows

    rows = p.batch * p.masked
    work = chunked_library_work(rows, p.vocab, p.embedding, HALF.itemsize, default_chunk_rows(rows))
    forward, backward = work["forward"], work["backward"]
    return {"forward": forward, "backward": backward, "fwd+bwd": (forward[0], forward[1] + backward[1])}


def attention_units(p: Problem) -> tuple:
    return (p.batch * p.heads,)  # one (batch, head) pair per program column


def run_attention(p: Problem, n: tuple) -> dict:
    """n heads of one sequence, as [1, n, L, D] views of [1, L, n, D] buffers (transformers' layout)."""
    return _run_attention(n[0], p.seq_len, p.head_dim)


@functools.lru_cache(maxsize=None)
def _run_attention(n: int, seq_len: int, head_dim: int) -> dict:
    from .fused.attention import key_bias_and_extent, padded_bounds
    from .kernels import attention
    from .sanitizer import sanitize

    g = _generator()

    def heads_first():
        return torch.randn(1, seq_len, n, head_dim, generator=g).to(HALF).transpose(1, 2)

    q, k, v = heads_first(), heads_first(), heads_first()
    key_bias, extent = key_bias_and_extent(torch.ones(1, seq_len, dtype=torch.bool), 1, seq_len, q.device)
    bounds = padded_bounds(1, seq_len, seq_len, extent)
    scale = head_dim**-0.5
    with gpu_launch_geometry():
        with sanitize(skip_dot_math=True) as forward:
            out, lse = attention.forward(q, k, v, key_bias, bounds, seq_len, seq_len, scale, 0.0, 0)
        with sanitize(skip_dot_math=True) as backward:
            attention.backward(torch.randn(out.shape, generator=g).to(HALF), q, k, v, out, lse, key_bias, bounds,
                               seq_len, seq_len, scale, 0.0, 0)
    return {"forward": forward, "backward": backward}


def attention_minimum(p: Problem) -> dict:
    b, h, n, d = p.batch, p.heads, p.seq_len, p.head_dim
    tensor = b * n * h * d * 2
    flops = 4 * b * h * n * n * d  # FlashAttention-2's count: QK^T and PV
    forward = 3 * tensor + b * n * 4 + tensor + b * h * n * 4  # q, k, v, key bias -> out, lse
    backward = 5 * tensor + b * h * n * 4 + b * n * 4 + 3 * tensor  # q, k, v, out, dout, lse, bias -> dq, dk, dv
    return {"forward": (flops, forward), "backward": (int(2.5 * flops), backward)}


def one_and_two(p: Problem) -> tuple:
    return ((1, 2),)


# Work a design runs outside Triton (library GEMMs), added to its counted kernels: {pass: (FLOPs, bytes)}.
LIBRARY_WORK = {"generator_head_chunked": generator_head_chunked_library_work}
KERNELS = {  # name: (units per axis, two probe values per axis, run at given units, minimum work per pass)
    "masking": (masking_units, one_and_two, run_masking, masking_minimum),
    "generator_head": (generator_head_units, generator_head_probes, run_generator_head, generator_head_minimum),
    "generator_head_chunked": (generator_head_chunked_units, one_and_two, run_generator_head_chunked,
                               generator_head_minimum),
    "rtd_loss": (rtd_units, one_and_two, run_rtd_loss, rtd_minimum),
    "attention": (attention_units, one_and_two, run_attention, attention_minimum),
}


# --- counting, AOT figures, roofline ----------------------------------------------------------------------------

def pass_totals(launches) -> dict:
    return {"flops": sum(x.dot_flops for x in launches), "bytes": sum(x.bytes for x in launches),
            "out_of_bounds": sum(x.out_of_bounds for x in launches)}


def extrapolate(values: dict, probes: tuple, target: tuple) -> int:
    """The multilinear function through ``values`` {corner: value} (corners: one of the two probe values per
    axis) at ``target``; exact rational arithmetic, and the result must be an integer."""
    total = Fraction(0)
    for corner, value in values.items():
        weight = Fraction(1)
        for x, (lo, hi), c in zip(target, probes, corner):
            weight *= Fraction(x - lo, hi - lo) if c == hi else Fraction(hi - x, hi - lo)
        total += weight * value
    assert total.denominator == 1, "counts are not multilinear in the units"
    return int(total)


def scaled_counts(kernel: str, p: Problem) -> dict:
    """{pass: totals} at the real units, extrapolated exactly from runs at the probe corners."""
    units, probes_of, run, _ = KERNELS[kernel]
    probes = probes_of(p)
    runs = {corner: run(p, corner) for corner in itertools.product(*probes)}
    counts = {}
    for name in PASSES[kernel]:
        totals = {corner: pass_totals(result[name]) for corner, result in runs.items()}
        counts[name] = {key: extrapolate({c: t[key] for c, t in totals.items()}, probes, units(p))
                        for key in ("flops", "bytes")}
        counts[name]["out_of_bounds"] = sum(t["out_of_bounds"] for t in totals.values())  # seen, not scaled
        counts[name]["launches"] = runs[min(runs)][name]
        if kernel in LIBRARY_WORK:
            flops, nbytes = LIBRARY_WORK[kernel](p)[name]
            counts[name]["flops"] += flops
            counts[name]["bytes"] += nbytes
    return counts


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


def aot_figures(launch, rows: list[dict], arch: str = "sm_90a") -> dict | None:
    """The registered configuration a launch uses (bf16 where it was counted in fp16), compiled for ``arch``."""
    constexprs = {k: ("bf16" if k == "DOT_DTYPE" else v) for k, v in launch.constexprs.items()}
    values = ",".join(f"{k}={v}" for k, v in sorted(constexprs.items()))
    prefix = f"{launch.kernel}[{values}|"
    suffix = f"|w{launch.num_warps or 4}s{launch.num_stages or 3}]"
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
        "occupancy": min(occupancy(f["registers"], f["shared_bytes"], launch.num_warps or 4, arch)
                         for launch, f in found),
    }


def roofline_seconds(flops: float, nbytes: float) -> dict:
    """Lower bound of a model: max(FLOPs / peak bf16 FLOP/s, bytes / peak HBM B/s) per GPU."""
    return {gpu: max(flops / peak_flops, nbytes / bandwidth) for gpu, (peak_flops, bandwidth) in PEAKS.items()}


def records(which: str = "small", aot: list[dict] | None = None, kernels=tuple(KERNELS)) -> list[dict]:
    aot = aot if aot is not None else []
    out = []
    for p in problems(which):
        for kernel in kernels:
            counts = scaled_counts(kernel, p)
            minimum = KERNELS[kernel][3](p)
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
