"""Masking (choose positions, corrupt them, fixed-size slots): electra-fast against the recipes in use today.

Implementations, same inputs, same run:

* ``electra_fast``: ``ef.mask_tokens`` (exact count, the official recipe), one kernel launch on a GPU;
  ``electra_fast_bernoulli`` the same op in Bernoulli mode;
* ``reference``: the literal PyTorch version (``electra_fast.reference.mask_tokens``);
* ``topk_noise``: the electra-pytorch recipe: uniform noise on the candidates, ``topk`` of P, slots past the
  row's count dropped, then [MASK] / keep from a second uniform (positions come out unsorted);
* ``hf_bernoulli``: the recipe of transformers' ``DataCollatorForLanguageModeling``: ``torch.bernoulli`` per
  token for the choice and the 80/10/10 actions, ``torch.where`` to corrupt (labels [B, L], no slots).

On a GPU each of ``electra_fast``, ``topk_noise`` and ``hf_bernoulli`` is also replayed from a CUDA graph
(``+graph``): that removes the Python and launch overhead and shows the device time alone. GB/s count the
bytes the op must move once: ids, mask and corrupted ids (int64), ``is_masked`` and the [B, P] slots.
On the CPU (small shapes) ``electra_fast`` is the reference path that ``ef.mask_tokens`` dispatches to. The
quick matrix (common.QUICK) keeps the first two shapes on a GPU and the first on the CPU.
"""

from __future__ import annotations

import pytest
import torch
from common import DEVICE, ON_GPU, QUICK, measure

import electra_fast as ef
from electra_fast import reference

MASK_PROB = 0.15
VOCAB = 30522  # BERT's uncased vocabulary
PAD, CLS, SEP, MASK = 0, 101, 102, 103
SPECIALS = (PAD, CLS, SEP)
GPU_SHAPES = ((256, 128), (64, 512), (16, 4096))
CPU_SHAPES = ((32, 128), (8, 512))
SHAPES = (GPU_SHAPES[:2] if QUICK else GPU_SHAPES) if ON_GPU else (CPU_SHAPES[:1] if QUICK else CPU_SHAPES)
IMPLS = ("electra_fast", "electra_fast_bernoulli", "reference", "topk_noise", "hf_bernoulli")
GRAPHED = ("electra_fast", "topk_noise", "hf_bernoulli")


def make_batch(batch: int, seq_len: int):
    """[CLS] tokens [SEP] rows, real lengths uniform in [L/2, L], padded; int64 ids and mask as tokenizers give."""
    gen = torch.Generator().manual_seed(batch * seq_len)
    ids = torch.randint(1000, VOCAB, (batch, seq_len), generator=gen)
    lengths = torch.randint(seq_len // 2, seq_len + 1, (batch,), generator=gen)
    mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
    ids[:, 0] = CLS
    ids[torch.arange(batch), lengths - 1] = SEP
    ids = torch.where(mask.bool(), ids, PAD)
    return ids.to(DEVICE), mask.to(DEVICE)


def electra_fast(ids, mask, mode="exact"):
    return ef.mask_tokens(ids, mask, mask_token_id=MASK, special_token_ids=SPECIALS, mask_prob=MASK_PROB,
                          vocab_size=VOCAB, mode=mode, seed=7)


def reference_path(ids, mask):
    return reference.mask_tokens(ids, mask, mask_token_id=MASK, special_token_ids=SPECIALS, mask_prob=MASK_PROB,
                                 vocab_size=VOCAB, seed=7)


def topk_noise(ids, mask, specials, max_predictions):
    """electra-pytorch: the P smallest of uniform noise over candidates, the first k of them kept."""
    valid = mask.bool()
    candidate = valid & ~torch.isin(ids, specials)
    k = torch.round(valid.sum(1) * MASK_PROB).clamp(1, max_predictions).minimum(candidate.sum(1))
    noise = torch.rand(ids.shape, device=ids.device).masked_fill(~candidate, 2.0)
    positions = noise.topk(max_predictions, dim=1, largest=False).indices
    real = torch.arange(max_predictions, device=ids.device)[None, :] < k[:, None]
    positions = torch.where(real, positions, 0)
    is_masked = torch.zeros_like(valid).scatter_(1, positions, real)
    targets = torch.where(real, ids.gather(1, positions), 0)
    use_mask_token = is_masked & (torch.rand(ids.shape, device=ids.device) < 0.85)
    corrupted = torch.where(use_mask_token, MASK, ids)
    return corrupted, positions, targets, real.float(), is_masked


def hf_bernoulli(ids, mask, specials):
    """transformers' DataCollatorForLanguageModeling.torch_mask_tokens, with torch.where instead of indexing."""
    probability = torch.full(ids.shape, MASK_PROB, device=ids.device)
    probability.masked_fill_(~mask.bool() | torch.isin(ids, specials), 0.0)
    masked = torch.bernoulli(probability).bool()
    labels = torch.where(masked, ids, -100)
    replaced = torch.bernoulli(torch.full(ids.shape, 0.8, device=ids.device)).bool() & masked
    random = torch.bernoulli(torch.full(ids.shape, 0.5, device=ids.device)).bool() & masked & ~replaced
    random_words = torch.randint(VOCAB, ids.shape, device=ids.device)
    corrupted = torch.where(replaced, MASK, torch.where(random, random_words, ids))
    return corrupted, labels


def cuda_graph_replay(fn):
    """Capture ``fn`` (after warm-up on a side stream, which also compiles the kernel) and return the replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def bytes_moved(batch: int, seq_len: int, max_predictions: int) -> int:
    per_token = 8 + 8 + 8 + 1  # ids, mask, corrupted ids, is_masked
    per_slot = 8 + 8 + 4  # positions, targets, weights
    return batch * seq_len * per_token + batch * max_predictions * per_slot


CASES = [(shape, impl, False) for shape in SHAPES for impl in IMPLS]
if ON_GPU:
    CASES += [(shape, impl, True) for shape in SHAPES for impl in GRAPHED]


def case_id(value) -> str:
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    if isinstance(value, bool):
        return "graph" if value else "eager"
    return value


@pytest.mark.parametrize("shape,impl,graphed", CASES, ids=case_id)
def test_masking(benchmark, shape, impl, graphed):
    batch, seq_len = shape
    ids, mask = make_batch(batch, seq_len)
    max_predictions = reference.default_max_predictions(seq_len, MASK_PROB)
    specials = torch.tensor([*SPECIALS, MASK], device=DEVICE)
    fn = {
        "electra_fast": lambda: electra_fast(ids, mask),
        "electra_fast_bernoulli": lambda: electra_fast(ids, mask, mode="bernoulli"),
        "reference": lambda: reference_path(ids, mask),
        "topk_noise": lambda: topk_noise(ids, mask, specials, max_predictions),
        "hf_bernoulli": lambda: hf_bernoulli(ids, mask, specials),
    }[impl]
    if graphed:
        fn = cuda_graph_replay(fn)
    tokens = batch * seq_len
    slots = seq_len if impl == "electra_fast_bernoulli" else max_predictions  # Bernoulli mode: P = L by default
    measure(benchmark, fn, op="mask_tokens", impl=impl + ("+graph" if graphed else ""), shape=f"{batch}x{seq_len}",
            bytes_moved=bytes_moved(batch, seq_len, slots), tokens=tokens)
