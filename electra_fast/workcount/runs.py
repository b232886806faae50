"""Each op's launches at ELECTRA's shapes, counted in the Triton interpreter and scaled exactly to the real grid.

* Counting (``electra_fast.sanitizer``): tl.dot FLOPs, bytes requested from / stored to global memory, and lanes
  that address memory outside the launch's tensors (must be 0).
* GPU launch geometry: launchers pick other tiles under the interpreter, so counting runs them as on a GPU with
  ``GPU_SMS`` SMs of architecture ``GPU_ARCH`` (``gpu_launch``, i.e. ``registry.gpu_geometry``): GPU tiles, one
  row per masking program, the generator head's vocabulary splits and the RTD backward's row groups of the real
  shape.
* Scaling: ELECTRA's shapes are far too big for the interpreter. Each kernel has a unit of work that the grid
  repeats (a masking row, an RTD backward row group, an attention (batch, head) pair, and for the generator
  head 128 rows and 128 vocabulary ids); with the per-program geometry fixed, each program's work
  does not depend on how many units there are, so every count is affine in each unit count: counted at two
  values per axis (1 and 2 units; for vocabulary tiles the two fewest that give the real number of splits,
  keeping the last, partial tile) and extrapolated exactly (tests/test_inspect.py checks a third point).

Tensors are fp16 under the interpreter (the same bytes as the bf16 of training; the interpreter computes bf16
wrongly).
"""

from __future__ import annotations

import functools
import itertools
from fractions import Fraction
from typing import Callable, NamedTuple

import torch
import triton

from ..fused.attention import key_bias_and_extent, padded_bounds
from ..fused.generator_head_strategy import chunked_library_work, default_chunk_rows
from ..kernels import attention, generator_head, generator_head_chunked, masking, registry, rtd_loss
from ..sanitizer import sanitize
from .problems import PASSES, Problem

GPU_SMS = 132  # H100 SXM / H200: the SM count the launchers' GPU geometry is computed for
GPU_ARCH = "sm_90"  # the tile table's H100/H200 entries
HALF = torch.float16  # stands in for bf16: same bytes, computed right by the interpreter


def gpu_launch(**scaling):
    """Launch as on an H100/H200 (``registry.gpu_geometry``); ``scaling`` sets its fields for scaled-down grids."""
    return registry.gpu_geometry(sms=GPU_SMS, arch=GPU_ARCH, **scaling)


# --- the ops: scaling unit, probe values and a run of n units ---------------------------------------------------

def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def one_and_two(p: Problem) -> tuple:
    return ((1, 2),)


def masking_units(p: Problem) -> tuple:
    return (p.batch,)  # one row per program


def run_masking(p: Problem, n: tuple) -> dict:
    g = _generator()
    rows = n[0]
    ids = torch.randint(200, p.vocab, (rows, p.seq_len), generator=g)  # no special ids
    valid = torch.ones(rows, p.seq_len, dtype=torch.int64)
    with gpu_launch(), sanitize() as forward:
        masking.forward(ids, valid, seed=1, mask_token_id=103, special_ids=[0, 100, 101, 102, 103],
                        vocab_size=p.vocab, mask_prob=p.mask_prob, max_predictions=p.masked, t_mask=0.8,
                        t_random=0.9, use_random=True, bernoulli=False, block_rows=1)
    return {"forward": forward}


def _rtd_geometry(p: Problem) -> tuple[int, int]:
    """(rows per backward group, groups) of the real launch."""
    row_blocks = triton.cdiv(p.tokens, rtd_loss.BACKWARD_BLOCK_ROWS)
    groups = min(row_blocks, rtd_loss.MAX_BACKWARD_GROUPS)
    rows_per_group = triton.cdiv(row_blocks, groups) * rtd_loss.BACKWARD_BLOCK_ROWS
    return rows_per_group, triton.cdiv(p.tokens, rows_per_group)


def rtd_units(p: Problem) -> tuple:
    rows_per_group, groups = _rtd_geometry(p)
    assert rows_per_group * groups == p.tokens, "scaling is exact only for whole row groups"
    return (groups,)


def run_rtd_loss(p: Problem, n: tuple) -> dict:
    (n,) = n
    rows = n * _rtd_geometry(p)[0]
    g = _generator()
    projected = torch.randn(rows, p.hidden, generator=g).to(HALF)
    dense_bias, weight = torch.randn(p.hidden, generator=g), torch.randn(p.hidden, generator=g)
    original = torch.randint(0, p.vocab, (rows,), generator=g)
    corrupted = torch.where(torch.rand(rows, generator=g) < 0.15, original + 1, original)
    valid = torch.ones(rows, dtype=torch.uint8)
    with gpu_launch(rtd_backward_groups=n):  # n groups of the real launch's rows each
        with sanitize() as forward:
            logits, labels, _, _ = rtd_loss.forward(projected, dense_bias, weight, torch.zeros(1), corrupted,
                                                    original, valid, "gelu")
        with sanitize() as backward:
            rtd_loss.backward(projected, dense_bias, weight, logits, labels, valid, torch.zeros(rows),
                              torch.ones(1), "gelu")
    return {"forward": forward, "backward": backward}


# The generator head's scaling units: 128 rows and 128 vocabulary ids, whole tiles of both passes' GPU tiles
# (the forward's 64-row tiles and the backward's 128-row ones on sm_90; kernels/tile_table.json).
GENERATOR_ROWS, GENERATOR_VOCAB = 128, 128


def generator_head_units(p: Problem) -> tuple:
    """(row units, vocabulary units). The last vocabulary unit may be partial; scaled runs keep its width."""
    tiles = generator_head.tiles_for_gpu(HALF)
    assert GENERATOR_ROWS % tiles.forward_block_m == 0 and GENERATOR_ROWS % tiles.backward_block_m == 0, (
        f"the row unit {GENERATOR_ROWS} must hold whole row tiles of both passes: {tiles}")
    assert GENERATOR_VOCAB % tiles.forward_block_v == 0 and GENERATOR_VOCAB % tiles.backward_block_v == 0, (
        f"the vocabulary unit {GENERATOR_VOCAB} must hold whole vocabulary tiles of both passes: {tiles}")
    rows = p.batch * p.masked
    assert rows % GENERATOR_ROWS == 0, "scaling is exact only for whole row units"
    return rows // GENERATOR_ROWS, -(-p.vocab // GENERATOR_VOCAB)


def _generator_head_splits(row_units: int, vocab: int, embedding: int) -> int:
    """Vocabulary splits of the fused forward's real launch with ``row_units`` and ``vocab`` ids."""
    tiles = generator_head.tiles_for_gpu(HALF)
    with gpu_launch():
        return generator_head._vocab_splits(row_units * GENERATOR_ROWS // tiles.forward_block_m, vocab,
                                            tiles.forward_block_v, None)[0]


def generator_head_probes(p: Problem) -> tuple:
    """Row units 1 and 2, and two vocabulary-unit counts at which the forward's splits grow affinely towards the
    real launch's: each split does a fixed amount of work besides its tiles, so a count is A * tiles + B * splits
    + C. Either one tile per split, as in the real launch (1 and 2 units), or the real number of splits (the two
    fewest such unit counts). Every count is then bilinear in (row units, vocabulary units)."""
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
    rows = row_units * GENERATOR_ROWS
    g = _generator()
    hidden = torch.randn(rows, embedding, generator=g).to(HALF)
    weight = (torch.randn(vocab, embedding, generator=g) * 0.05).to(HALF)
    bias = torch.zeros(vocab, dtype=HALF)
    targets = torch.randint(0, vocab, (rows,), generator=g)
    # The vocabulary splits as for the real rows (a scaled-down M splits the vocabulary as the real M does).
    with gpu_launch(generator_head_split_rows=real_row_units * GENERATOR_ROWS):
        with sanitize(skip_dot_math=True) as forward:
            lse, _, _, _ = generator_head.forward(hidden, weight, bias, targets, temperature=1.0,
                                                  disallow_correct=False, seed=3, compute_grad=True)
        with sanitize(skip_dot_math=True) as backward:
            generator_head.backward(hidden, weight, bias, targets, lse, torch.full((rows,), 1.0 / rows))
    return {"forward": forward, "backward": backward, "fwd+bwd": forward + backward}


def generator_head_chunked_units(p: Problem) -> tuple:
    return (p.batch * p.masked,)  # one epilogue program per row


def run_generator_head_chunked(p: Problem, n: tuple) -> dict:
    return _run_generator_head_chunked(n[0], p.vocab)


@functools.lru_cache(maxsize=None)
def _run_generator_head_chunked(rows: int, vocab: int) -> dict:
    """The chunked design's Triton epilogue over ``rows`` rows of fp32 logits, forming 16-bit gradients (its
    GEMMs are the library's: ``generator_head_chunked_library_work`` counts them)."""
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
    g = _generator()

    def heads_first():
        return torch.randn(1, seq_len, n, head_dim, generator=g).to(HALF).transpose(1, 2)

    q, k, v = heads_first(), heads_first(), heads_first()
    key_bias, extent = key_bias_and_extent(torch.ones(1, seq_len, dtype=torch.bool), 1, seq_len, q.device)
    bounds = padded_bounds(1, seq_len, seq_len, extent)
    scale = head_dim**-0.5
    with gpu_launch():
        with sanitize(skip_dot_math=True) as forward:
            out, lse = attention.forward(q, k, v, key_bias, bounds, seq_len, seq_len, scale, 0.0, 0)
        with sanitize(skip_dot_math=True) as backward:
            attention.backward(torch.randn(out.shape, generator=g).to(HALF), q, k, v, out, lse, key_bias, bounds,
                               seq_len, seq_len, scale, 0.0, 0)
    return {"forward": forward, "backward": backward}


class Counting(NamedTuple):
    """How a kernel is counted: its units per axis, two probe values per axis, and a run at given units."""

    units: Callable[[Problem], tuple]
    probes: Callable[[Problem], tuple]
    run: Callable[[Problem, tuple], dict]


KERNELS = {
    "masking": Counting(masking_units, one_and_two, run_masking),
    "generator_head": Counting(generator_head_units, generator_head_probes, run_generator_head),
    "generator_head_chunked": Counting(generator_head_chunked_units, one_and_two, run_generator_head_chunked),
    "rtd_loss": Counting(rtd_units, one_and_two, run_rtd_loss),
    "attention": Counting(attention_units, one_and_two, run_attention),
}
# Work a design runs outside Triton (library GEMMs), added to its counted kernels: {pass: (FLOPs, bytes)}.
LIBRARY_WORK = {"generator_head_chunked": generator_head_chunked_library_work}


# --- counting and exact extrapolation --------------------------------------------------------------------------

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
    counting = KERNELS[kernel]
    probes = counting.probes(p)
    runs = {corner: counting.run(p, corner) for corner in itertools.product(*probes)}
    counts = {}
    for name in PASSES[kernel]:
        totals = {corner: pass_totals(result[name]) for corner, result in runs.items()}
        counts[name] = {key: extrapolate({c: t[key] for c, t in totals.items()}, probes, counting.units(p))
                        for key in ("flops", "bytes")}
        counts[name]["out_of_bounds"] = sum(t["out_of_bounds"] for t in totals.values())  # seen, not scaled
        counts[name]["launches"] = runs[min(runs)][name]
        if kernel in LIBRARY_WORK:
            flops, nbytes = LIBRARY_WORK[kernel](p)[name]
            counts[name]["flops"] += flops
            counts[name]["bytes"] += nbytes
    return counts
