"""Fused ELECTRA masking: choose positions and corrupt them in one launch (docs/design.md §1.1, §4).

Each program keeps whole rows in registers (up to ``MAX_SEQ_LEN`` tokens; one row per program on a GPU, a tile
of rows under the interpreter, whose cost is per operation): it reads the ids and the attention mask once,
draws a Philox priority key per candidate token, finds the k smallest keys by a 32-step binary search on the
key bits (ties broken by position with a prefix sum), and writes the corrupted ids, ``is_masked``, and the
fixed-size ``positions`` / ``targets`` / ``weights`` slots (slot = prefix count of chosen positions, so
positions come out ascending). Every choice equals ``electra_fast.reference.mask_tokens`` bit for bit: same
draws (``kernels.philox``), same float32 arithmetic for k and the action thresholds.
"""

import torch
import triton
import triton.language as tl

from .constants import Stream
from .philox import draw_uint32, draw_uniform, uint32_to_uniform
from .registry import gpu_tiles, register_launches

# Philox streams (constants.Stream, which electra_fast.rng reads too).
STREAM_MASK_KEYS = tl.constexpr(int(Stream.MASK_KEYS))
STREAM_MASK_ACTIONS = tl.constexpr(int(Stream.MASK_ACTIONS))
STREAM_RANDOM_TOKENS = tl.constexpr(int(Stream.RANDOM_TOKENS))

# Special ids (mask token included) are kernel scalars, so no device buffer is needed per call.
SPECIAL_SLOTS = 9
MIN_BLOCK_L = 128
# Rows up to 2048 tokens (ELECTRA uses 128-512). A 4096-token row in registers spilled on sm_80 under Triton 3.6
# at any warp count tried (8, 16, 32); longer rows take the torch path (fused/masking.supports).
MAX_SEQ_LEN = 2048


@triton.jit
def _is_special(ids, s0, s1, s2, s3, s4, s5, s6, s7, s8):
    return (
        (ids == s0) | (ids == s1) | (ids == s2) | (ids == s3) | (ids == s4)
        | (ids == s5) | (ids == s6) | (ids == s7) | (ids == s8)
    )


@triton.jit
def _skip_special(index, n_vocab_specials, s0, s1, s2, s3, s4, s5, s6, s7, s8):
    """The index-th id that is not special: walk the sorted in-vocabulary specials, stepping over each one <= id.

    Only the first ``n_vocab_specials`` slots (the specials below vocab_size, a prefix of the sorted list) count.
    """
    token = index
    token += ((n_vocab_specials > 0) & (s0 <= token)).to(tl.int64)
    token += ((n_vocab_specials > 1) & (s1 <= token)).to(tl.int64)
    token += ((n_vocab_specials > 2) & (s2 <= token)).to(tl.int64)
    token += ((n_vocab_specials > 3) & (s3 <= token)).to(tl.int64)
    token += ((n_vocab_specials > 4) & (s4 <= token)).to(tl.int64)
    token += ((n_vocab_specials > 5) & (s5 <= token)).to(tl.int64)
    token += ((n_vocab_specials > 6) & (s6 <= token)).to(tl.int64)
    token += ((n_vocab_specials > 7) & (s7 <= token)).to(tl.int64)
    token += ((n_vocab_specials > 8) & (s8 <= token)).to(tl.int64)
    return token


@triton.jit(
    do_not_specialize=[
        "seed", "mask_token_id", "special_0", "special_1", "special_2", "special_3", "special_4", "special_5",
        "special_6", "special_7", "special_8", "n_vocab_specials", "vocab_size", "has_mask", "bernoulli", "use_random",
    ]
)
def mask_tokens_kernel(
    ids_ptr, valid_ptr, out_ids_ptr, positions_ptr, targets_ptr, weights_ptr, is_masked_ptr,
    seed, batch, seq_len, max_predictions, mask_token_id,
    special_0, special_1, special_2, special_3, special_4, special_5, special_6, special_7, special_8,
    n_vocab_specials, vocab_size, mask_prob, t_mask, t_random,
    has_mask, bernoulli, use_random,
    BLOCK_ROWS: tl.constexpr, BLOCK_L: tl.constexpr,
):
    # BLOCK_L is also >= seq_len (the launcher's block_size): a row is one tile, so one sum or cumsum along
    # axis 1 counts or ranks within a row.
    tl.static_assert((BLOCK_L & (BLOCK_L - 1)) == 0, "BLOCK_L must be a power of two")
    tl.static_assert((BLOCK_ROWS & (BLOCK_ROWS - 1)) == 0, "BLOCK_ROWS must be a power of two")
    # A [BLOCK_ROWS, BLOCK_L] tile holds whole rows; every per-row quantity is a [BLOCK_ROWS] vector.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK_L)
    in_tile = (rows[:, None] < batch) & (cols[None, :] < seq_len)
    # The element index of every draw (docs/design.md §4) is row_start + col, formed at each use rather than kept as
    # an int64 tile live through the search below: that cut a 4096-token row from 255 registers to about 200
    # (Triton 3.9); with Triton 3.6 such a row still spilled on sm_80, hence MAX_SEQ_LEN = 2048.
    row_start = rows[:, None] * seq_len

    ids = tl.load(ids_ptr + row_start + cols[None, :], mask=in_tile, other=0)
    if has_mask != 0:
        valid = (tl.load(valid_ptr + row_start + cols[None, :], mask=in_tile, other=0) != 0) & in_tile
    else:
        valid = in_tile
    special = _is_special(
        ids, special_0, special_1, special_2, special_3, special_4, special_5, special_6, special_7, special_8
    )
    candidate = valid & ~special

    # One uint32 priority key per token; only candidates are ever counted.
    keys = draw_uint32(seed, STREAM_MASK_KEYS, row_start + cols[None, :])
    n_candidates = tl.sum(candidate.to(tl.int32), axis=1)

    # How many to choose. Exact: round-half-even(float32(n_valid) * float32(mask_prob)) clamped to [1, P],
    # rounded by hand (floor, then compare with floor + 0.5) so no libdevice call is needed. The product is only
    # compared, never added to: an add could be contracted into an FMA that skips its float32 rounding.
    n_valid = tl.sum(valid.to(tl.int32), axis=1)
    scaled = n_valid.to(tl.float32) * mask_prob
    floor = scaled.to(tl.int32)  # scaled >= 0, so truncation is floor
    midpoint = floor.to(tl.float32) + 0.5  # exact: floor <= 4096
    round_up = (scaled > midpoint) | ((scaled == midpoint) & ((floor % 2) == 1))
    n_exact = tl.minimum(tl.maximum(floor + round_up.to(tl.int32), 1), max_predictions)
    # Bernoulli: each candidate with probability mask_prob (its key's uniform), at most P; the chosen ones
    # are then the k smallest keys, as in the reference (same distribution: the count is symmetric in the keys).
    selected = candidate & (uint32_to_uniform(keys) < mask_prob)
    n_bernoulli = tl.minimum(tl.sum(selected.to(tl.int32), axis=1), max_predictions)
    k = tl.minimum(tl.where(bernoulli != 0, n_bernoulli, n_exact), n_candidates)

    # threshold = the k-th smallest candidate key: the least t with #{key <= t} >= k, found bit by bit from the
    # top in unsigned arithmetic (threshold + step never passes 2**32 - 1). Invariant: #{key < threshold} < k.
    threshold = tl.zeros([BLOCK_ROWS], dtype=tl.uint32)
    step = tl.full([], 2**31, tl.uint32)
    for _ in range(32):
        at_most = candidate & (keys <= (threshold + step - 1)[:, None])
        n_at_most = tl.sum(at_most.to(tl.int32), axis=1)
        threshold = tl.where(n_at_most < k, threshold + step, threshold)
        step = step >> 1
    # All keys below the threshold are chosen; of those equal to it, the first (k - n_below) by position.
    below = candidate & (keys < threshold[:, None])
    n_below = tl.sum(below.to(tl.int32), axis=1)
    tie = (candidate & (keys == threshold[:, None])).to(tl.int32)
    tie_rank = tl.cumsum(tie, axis=1) - tie
    chosen = below | ((tie != 0) & (tie_rank < (k - n_below)[:, None]))

    # Chosen positions fill slots 0..k-1 in ascending order: slot = number of chosen positions before it.
    chosen_int = chosen.to(tl.int32)
    slot = tl.cumsum(chosen_int, axis=1) - chosen_int
    slot_start = rows[:, None] * max_predictions
    zeros = tl.zeros([BLOCK_ROWS, BLOCK_L], dtype=tl.int64)
    tl.store(positions_ptr + slot_start + slot, zeros + cols[None, :], mask=chosen)
    tl.store(targets_ptr + slot_start + slot, ids.to(tl.int64), mask=chosen)
    for first in range(0, max_predictions, BLOCK_L):
        slots = first + cols[None, :]
        in_slots = (slots < max_predictions) & (rows[:, None] < batch)
        real = slots < k[:, None]
        tl.store(weights_ptr + slot_start + slots, real.to(tl.float32), mask=in_slots)
        padding = in_slots & ~real
        tl.store(positions_ptr + slot_start + slots, zeros, mask=padding)
        tl.store(targets_ptr + slot_start + slots, zeros, mask=padding)

    # Action per chosen position from its own uniform: u < t_mask -> [MASK], u < t_random -> random id, else keep.
    action = draw_uniform(seed, STREAM_MASK_ACTIONS, row_start + cols[None, :])
    corrupted = tl.where(chosen & (action < t_mask), mask_token_id, ids).to(ids.dtype)
    if use_random != 0:
        # Multiply-shift onto [0, n_allowed), then the index-th non-special id.
        n_allowed = vocab_size - n_vocab_specials
        draws = draw_uint32(seed, STREAM_RANDOM_TOKENS, row_start + cols[None, :]).to(tl.int64)
        index = (draws * n_allowed) >> 32
        random_ids = _skip_special(
            index, n_vocab_specials,
            special_0, special_1, special_2, special_3, special_4, special_5, special_6, special_7, special_8,
        )
        use_random_id = chosen & (action >= t_mask) & (action < t_random)
        corrupted = tl.where(use_random_id, random_ids.to(ids.dtype), corrupted)
    tl.store(out_ids_ptr + row_start + cols[None, :], corrupted, mask=in_tile)
    tl.store(is_masked_ptr + row_start + cols[None, :], chosen, mask=in_tile)


def block_size(seq_len: int) -> int:
    return max(MIN_BLOCK_L, triton.next_power_of_2(seq_len))


def num_warps_for(block_l: int) -> int:
    """About 8-16 tokens per thread: the row stays in registers and each of the 32 search steps reduces cheaply."""
    return min(8, max(1, block_l // 128))


def rows_per_program(batch: int, block_l: int) -> int:
    """One row per program on a GPU (B programs keep every SM busy); under the interpreter, whose cost is per
    operation rather than per element, as many rows as fit a tile of 2**14 tokens."""
    if gpu_tiles():
        return 1
    return min(triton.next_power_of_2(batch), max(1, 2**14 // block_l))


def forward(
    input_ids,
    attention_mask,
    *,
    seed: int,
    mask_token_id: int,
    special_ids,
    vocab_size,
    mask_prob: float,
    max_predictions: int,
    t_mask: float,
    t_random: float,
    use_random: bool,
    bernoulli: bool,
    block_rows=None,
):
    """Launch the masking kernel over a [B, L] batch (L <= MAX_SEQ_LEN).

    ``special_ids``: the sorted distinct special ids, mask token included (at most ``SPECIAL_SLOTS``).
    ``attention_mask``: None, or a bool / int32 / int64 [B, L] tensor (nonzero = real token).
    ``vocab_size`` is needed only with ``use_random``; ``t_mask`` / ``t_random`` are the float32 action
    thresholds. ``block_rows`` overrides ``rows_per_program``. Returns (input_ids, positions, targets, weights,
    is_masked).
    """
    batch, seq_len = input_ids.shape
    if seq_len > MAX_SEQ_LEN:
        raise ValueError(f"the masking kernel handles sequences up to {MAX_SEQ_LEN} tokens, got {seq_len}")
    special_ids = sorted(set(int(s) for s in special_ids))
    if not 1 <= len(special_ids) <= SPECIAL_SLOTS:
        raise ValueError(f"the masking kernel takes 1 to {SPECIAL_SLOTS} special ids, got {len(special_ids)}")
    n_vocab_specials = sum(1 for s in special_ids if vocab_size is not None and s < vocab_size)
    padded_specials = special_ids + [special_ids[-1]] * (SPECIAL_SLOTS - len(special_ids))  # repeats are harmless

    input_ids = input_ids.contiguous()
    device = input_ids.device
    out_ids = torch.empty_like(input_ids)
    positions = torch.empty((batch, max_predictions), dtype=torch.int64, device=device)
    targets = torch.empty((batch, max_predictions), dtype=torch.int64, device=device)
    weights = torch.empty((batch, max_predictions), dtype=torch.float32, device=device)
    is_masked = torch.empty((batch, seq_len), dtype=torch.bool, device=device)
    has_mask = attention_mask is not None
    valid = attention_mask.contiguous() if has_mask else input_ids
    block_l = block_size(seq_len)
    if block_rows is None:
        block_rows = rows_per_program(batch, block_l)
    mask_tokens_kernel[(triton.cdiv(batch, block_rows),)](
        input_ids, valid, out_ids, positions, targets, weights, is_masked,
        seed, batch, seq_len, max_predictions, mask_token_id, *padded_specials,
        n_vocab_specials, vocab_size if vocab_size is not None else 0, mask_prob, t_mask, t_random,
        # Flags go in as int32: Triton 3.6's interpreter cannot take a Python bool for an i1 argument.
        int(has_mask), int(bernoulli), int(use_random),
        BLOCK_ROWS=block_rows, BLOCK_L=block_l, num_warps=num_warps_for(block_l),
    )
    return out_ids, positions, targets, weights, is_masked


def _register_launch_configs():
    """The compiled (GPU) launches, as the pre-trainer makes them (docs/design.md §6): int64 ids and mask as
    transformers tokenizers return them at every block size up to MAX_SEQ_LEN (batch 16; 128 at L = 128), and
    int32 ids with a bool mask at L = 512; BERT's special ids, 15 % masking with the 80/10/10 split."""

    def run(arch):
        del arch  # one configuration serves every architecture
        shapes = [(128 if length == 128 else 16, length, torch.int64, torch.int64)
                  for length in (MIN_BLOCK_L * 2**i for i in range(MAX_SEQ_LEN.bit_length()))
                  if length <= MAX_SEQ_LEN]
        for batch, length, ids_dtype, mask_dtype in shapes + [(16, 512, torch.int32, torch.bool)]:
            forward(torch.empty(batch, length, dtype=ids_dtype), torch.empty(batch, length, dtype=mask_dtype),
                    seed=0x2545F4914F6CDD1D, mask_token_id=103, special_ids=(0, 100, 101, 102, 103), vocab_size=30522,
                    mask_prob=0.15, max_predictions=int((0.15 + 0.005) * length), t_mask=0.8, t_random=0.9,
                    use_random=True, bernoulli=False)

    register_launches(run)


_register_launch_configs()
