"""Literal PyTorch versions of every electra-fast op: the test oracles (electra_fast/cpu/ computes the same
with less work).

Each function spells out ELECTRA's semantics (docs/design.md §1) as plainly as possible; every random choice comes
from ``electra_fast.rng`` so the Triton kernels can be compared with these functions bit for bit. Arguments
are assumed validated by ``electra_fast.validation`` (the public ops in ``electra_fast.ops`` do it).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from . import rng
from .contracts import (
    RTD_ACTIVATIONS,
    action_thresholds,
    additive_mask_allows,
    default_max_predictions,
    special_id_set,
)
from .outputs import MaskedTokens, RTDOutput
from .rng import Stream


def random_token_ids(draws: torch.Tensor, vocab_size: int, special_ids: Sequence[int]) -> torch.Tensor:
    """Map uint32 draws to uniformly random non-special ids in [0, vocab_size).

    ``index = (draw * n_allowed) >> 32`` (multiply-shift, bias below n_allowed / 2**32), then the index-th
    id that is not special.
    """
    allowed = torch.ones(vocab_size, dtype=torch.bool, device=draws.device)
    specials = [s for s in set(special_ids) if 0 <= s < vocab_size]
    if specials:
        allowed[torch.tensor(specials, device=draws.device)] = False
    allowed_ids = torch.nonzero(allowed).flatten()
    index = (draws * allowed_ids.numel()) >> 32
    return allowed_ids[index]


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    *,
    mask_token_id: int,
    special_token_ids: Sequence[int] = (),
    mask_prob: float = 0.15,
    max_predictions: Optional[int] = None,
    mask_token_prob: float = 0.85,
    random_token_prob: float = 0.0,
    vocab_size: Optional[int] = None,
    mode: str = "exact",
    seed: int = 0,
) -> MaskedTokens:
    """Choose and corrupt positions (docs/design.md §1.1)."""
    batch, seq_len = input_ids.shape
    device = input_ids.device
    P = max_predictions if max_predictions is not None else default_max_predictions(seq_len, mask_prob, mode)
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    specials = special_id_set(special_token_ids, mask_token_id)
    is_special = torch.isin(input_ids, torch.tensor(specials, device=device, dtype=input_ids.dtype))
    candidate = valid & ~is_special

    # One uint32 priority key per (row, col); the k smallest keys among candidates are chosen, ties broken
    # by position. Non-candidates get a key above every draw.
    flat_index = torch.arange(batch * seq_len, device=device).view(batch, seq_len)
    keys = rng.draw(seed, Stream.MASK_KEYS, flat_index)
    keys = torch.where(candidate, keys, torch.full_like(keys, 2**32))
    order = torch.argsort(keys * seq_len + torch.arange(seq_len, device=device), dim=1)  # unique composite keys
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(seq_len, device=device).expand(batch, seq_len).contiguous())

    n_candidates = candidate.sum(1)
    if mode == "exact":
        n_valid = valid.sum(1)
        # round() in float32, half to even (tf.round in the official code), then clamp to [1, P].
        k = torch.round(n_valid.to(torch.float32) * torch.tensor(mask_prob, dtype=torch.float32)).to(torch.int64)
        k = k.clamp(min=1, max=P)
    else:  # bernoulli: each candidate independently with probability mask_prob, at most P (smallest keys)
        selected = candidate & (rng.uint32_to_uniform(keys.clamp(max=2**32 - 1)) < mask_prob)
        k = selected.sum(1).clamp(max=P)
    k = torch.minimum(k, n_candidates)
    is_masked = candidate & (rank < k[:, None])

    # Positions in ascending order; padding slots hold position 0, target 0, weight 0.
    slot = torch.arange(P, device=device)
    real_slot = slot[None, :] < k[:, None]
    sorted_positions = torch.sort(torch.where(is_masked, torch.arange(seq_len, device=device), seq_len), dim=1).values
    if P > seq_len:
        sorted_positions = F.pad(sorted_positions, (0, P - seq_len), value=seq_len)
    positions = torch.where(real_slot, sorted_positions[:, :P], 0).to(torch.int64)
    targets = torch.where(real_slot, input_ids.gather(1, positions).to(torch.int64), 0)
    weights = real_slot.to(torch.float32)

    # Action per chosen position: [MASK], keep, or a random non-special id.
    u = rng.draw_uniform(seed, Stream.MASK_ACTIONS, flat_index)
    t_mask, t_random = action_thresholds(mask_token_prob, random_token_prob)
    corrupted = input_ids.clone()
    corrupted[is_masked & (u < t_mask)] = mask_token_id
    if random_token_prob > 0:
        use_random = is_masked & (u >= t_mask) & (u < t_random)
        random_ids = random_token_ids(rng.draw(seed, Stream.RANDOM_TOKENS, flat_index), vocab_size, specials)
        corrupted = torch.where(use_random, random_ids.to(corrupted.dtype), corrupted)
    return MaskedTokens(corrupted, positions, targets, weights, is_masked)


def gumbel_noise(seed: int, rows: int, vocab_size: int, device=None) -> torch.Tensor:
    """Gumbel(0, 1) noise ``-log(-log(u))`` for every (row, vocab id); u from stream GUMBEL at row * V + v."""
    index = torch.arange(rows * vocab_size, device=device, dtype=torch.int64).view(rows, vocab_size)
    u = rng.draw_uniform(seed, Stream.GUMBEL, index)
    return -torch.log(-torch.log(u))


def generator_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """fp32 logits ``hidden @ weight.T + bias`` at the slots only ([M, V])."""
    logits = hidden.float() @ weight.float().t()
    return logits if bias is None else logits + bias.float()


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(w * x) / sum(w), and 0 (with zero gradient) when the weights sum to 0."""
    total = weights.sum()
    return (values * weights).sum() / torch.where(total > 0, total, torch.ones_like(total))


def generator_loss_and_sample(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    targets: torch.Tensor,
    weights: Optional[torch.Tensor] = None,
    *,
    temperature: float = 1.0,
    disallow_correct: bool = False,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MLM loss (weighted mean cross-entropy, fp32) and Gumbel-max samples from the same logits
    (docs/design.md §1.2-1.3)."""
    logits = generator_logits(hidden, weight, bias)
    if weights is None:
        weights = torch.ones(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    nll = torch.logsumexp(logits, dim=-1) - logits.gather(1, targets[:, None].long()).squeeze(1)
    loss = weighted_mean(nll, weights.float())
    with torch.no_grad():
        scores = logits.detach() / temperature + gumbel_noise(seed, *logits.shape, device=logits.device)
        if disallow_correct:
            scores.scatter_(1, targets[:, None].long(), float("-inf"))
        samples = scores.argmax(dim=-1)
    return loss, samples


def activation_fn(name: str):
    """The discriminator head's activation by its transformers name (contracts.RTD_ACTIVATIONS)."""
    function = RTD_ACTIVATIONS.get(name)
    if function == "gelu_erf":
        return F.gelu
    if function == "gelu_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    if function == "relu":
        return F.relu
    raise ValueError(f"activation must be one of {tuple(RTD_ACTIVATIONS)}, got {name!r}")


def rtd_metrics(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """accuracy, precision, recall and replaced fraction over valid tokens (fp32, no gradient)."""

    def ratio(num, den):
        den = den.float()
        return num.float() / torch.where(den > 0, den, torch.ones_like(den))

    with torch.no_grad():
        predicted = (logits > 0) & valid
        n_valid = valid.sum()
        true_pos = (predicted & labels).sum()
        accuracy = ratio(((logits > 0) == labels)[valid].sum(), n_valid)
        return accuracy, ratio(true_pos, predicted.sum()), ratio(true_pos, labels.sum()), ratio(labels.sum(), n_valid)


def rtd_loss(
    hidden: torch.Tensor,
    dense_weight: torch.Tensor,
    dense_bias: Optional[torch.Tensor],
    prediction_weight: torch.Tensor,
    prediction_bias: Optional[torch.Tensor],
    corrupted_ids: torch.Tensor,
    original_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    *,
    activation: str = "gelu",
) -> RTDOutput:
    """Discriminator head ``dense(H, act) -> dense(1)`` and replaced-token-detection BCE (docs/design.md §1.4-1.5).

    ``hidden`` is the discriminator's sequence output ``[..., H]``; ids and mask have its leading shape.
    """
    pre_activation = F.linear(hidden, dense_weight, dense_bias)
    activated = activation_fn(activation)(pre_activation.float())
    # ops accepts a prediction weight of any shape with H elements ([1, H] or [H]) and a bias with one element:
    # as [1, H] and [1], the squeeze below removes exactly the output feature dimension.
    prediction_bias = None if prediction_bias is None else prediction_bias.reshape(1).float()
    logits = F.linear(activated, prediction_weight.reshape(1, -1).float(), prediction_bias)
    logits = logits.squeeze(-1)
    valid = torch.ones_like(original_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    labels = (corrupted_ids != original_ids) & valid
    per_token = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none")
    loss = weighted_mean(per_token, valid.float())
    return RTDOutput(loss, logits, labels, *rtd_metrics(logits, labels, valid))


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: Optional[torch.Tensor] = None,
    *,
    dropout_p: float = 0.0,
    scale: Optional[float] = None,
    seed: int = 0,
    return_lse: bool = False,
):
    """Bidirectional softmax attention on ``[B, heads, L, D]`` tensors, computed in fp32.

    ``key_padding_mask``: ``[B, Lk]`` bool, True for a real key (as transformers' attention_mask), or an
    additive float mask broadcastable to ``[B, heads, Lq, Lk]`` whose masked entries are -inf or dtype-min.
    A query row with no key left gets output 0 (and LSE -inf). Dropout keeps probability (i, j) of
    (b, h) iff ``rng.draw_uniform(seed, ATTENTION_DROPOUT, ((b * heads + h) * Lq + i) * Lk + j) >= dropout_p``
    and scales kept ones by ``1 / (1 - dropout_p)``.
    """
    batch, heads, q_len, head_dim = q.shape
    k_len = k.shape[2]
    scale = head_dim**-0.5 if scale is None else scale
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    if key_padding_mask is not None:
        if key_padding_mask.dtype == torch.bool:
            allowed = key_padding_mask[:, None, None, :].expand(batch, heads, q_len, k_len)
        else:
            additive = key_padding_mask.float().expand(batch, heads, q_len, k_len)
            allowed = additive_mask_allows(additive, key_padding_mask.dtype)
            scores = scores + torch.where(allowed, additive, torch.zeros_like(additive))
        scores = scores.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    # exp(score - lse); rows whose keys are all masked have lse = -inf and get probability 0 everywhere.
    probs = torch.where(torch.isfinite(lse)[..., None], torch.exp(scores - lse[..., None]), torch.zeros_like(scores))
    if dropout_p > 0:
        index = torch.arange(batch * heads * q_len * k_len, device=q.device).view(batch, heads, q_len, k_len)
        keep = rng.draw_uniform(seed, Stream.ATTENTION_DROPOUT, index) >= dropout_p
        probs = probs * keep / (1.0 - dropout_p)
    out = (probs @ v.float()).to(q.dtype)
    return (out, lse) if return_lse else out


def attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    *,
    dropout_p: float = 0.0,
    scale: Optional[float] = None,
    seed: int = 0,
) -> torch.Tensor:
    """Attention within each packed sequence of ``q, k, v`` [total, heads, D]: defined as ``attention`` on the
    batch right-padded to ``max_seqlen`` (so the dropout mask is the padded batch's), then unpadded."""
    offsets = [int(x) for x in cu_seqlens.tolist()]
    batch, (_, heads, head_dim) = len(offsets) - 1, q.shape
    padded = [q.new_zeros(batch, max_seqlen, heads, head_dim) for _ in range(3)]
    real = torch.zeros(batch, max_seqlen, dtype=torch.bool, device=q.device)
    for b in range(batch):
        start, end = offsets[b], offsets[b + 1]
        for dst, src in zip(padded, (q, k, v)):
            dst[b, : end - start] = src[start:end]
        real[b, : end - start] = True
    out = attention(*(t.transpose(1, 2) for t in padded), real, dropout_p=dropout_p, scale=scale, seed=seed)
    return torch.cat([out[b, :, : offsets[b + 1] - offsets[b]].transpose(0, 1) for b in range(batch)])
