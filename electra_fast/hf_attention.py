"""``attn_implementation="electra_fast"`` for Hugging Face transformers models (Electra, BERT, ...).

``import electra_fast`` calls ``register()``, which adds two entries under the name ``"electra_fast"``:

* ``transformers.AttentionInterface``: ``electra_fast_attention(module, query, key, value, attention_mask,
  scaling=, dropout=, **kwargs) -> (out [B, L, heads, D], None)``, the signature transformers 5.x calls
  attention functions with; query/key/value arrive as [B, heads, L, D] views of the projections and are read
  in place; the output is contiguous [B, L, heads, D] when the Triton kernel runs.
* ``transformers.masking_utils.AttentionMaskInterface``: without a mask function of its own, transformers
  passes *no* mask to a registered attention name, silently ignoring padding. Ours hands the 2-D padding mask
  through unchanged (like flash-attention's), so the kernel gets a [B, L] key mask and skips padded key
  blocks; masks that are not plain bidirectional padding (custom mask functions) are built as sdpa builds
  them and run on the reference with a warning.

Select it with ``ElectraModel.from_pretrained(..., attn_implementation="electra_fast")``,
``model.set_attn_implementation("electra_fast")`` or ``config._attn_implementation = "electra_fast"``.

Dropout seed: pass ``electra_fast_seed=<int>`` as a keyword argument to the model's forward (transformers
forwards extra keyword arguments down to the attention function); it should change every step. Each layer
uses ``layer_seed(seed, module.layer_idx)`` so layers draw different masks. Without the keyword a seed is
drawn from torch's default CPU generator (so ``torch.manual_seed`` makes runs repeatable). Two models whose
layers have the same ``layer_idx`` (ELECTRA's generator and discriminator) need different seeds.
"""

from __future__ import annotations

import itertools

import torch

from . import ops
from .contracts import key_only

NAME = "electra_fast"
SEED_KWARG = "electra_fast_seed"
# Odd 64-bit constant (2**64 / golden ratio): layer i's seed is seed + (i + 1) * stride, mod 2**63.
_LAYER_SEED_STRIDE = 0x9E3779B97F4A7C15
_unindexed_layers = itertools.count()


def encoder_seed(seed: int, encoder_index: int) -> int:
    """Distinct model-level seeds for several encoders driven by one step seed (e.g. ELECTRA's generator 0 and
    discriminator 1), so that their layers with equal ``layer_idx`` draw different dropout masks."""
    return (seed * 2 + encoder_index) % 2**63


def layer_seed(seed: int, layer_index: int) -> int:
    """The dropout seed of layer ``layer_index`` for a model-level ``seed`` (both ints >= 0)."""
    return (seed + (layer_index + 1) * _LAYER_SEED_STRIDE) % 2**63


def _layer_index(module) -> int:
    index = getattr(module, "layer_idx", None)
    if isinstance(index, int):
        return index
    # Modules without layer_idx get a fixed index on first use (stable within a process for a given model).
    if not hasattr(module, "_electra_fast_layer_index"):
        module._electra_fast_layer_index = 10_000 + next(_unindexed_layers)
    return module._electra_fast_layer_index


def _dropout_seed(module, kwargs) -> int:
    seed = kwargs.get(SEED_KWARG)
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    elif isinstance(seed, torch.Tensor):
        seed = int(seed.item())
    return layer_seed(seed, _layer_index(module))


def _key_mask(attention_mask, dtype):
    """What ops.attention takes: None, a [B, Lk] bool key mask, or an additive float mask."""
    if attention_mask is None or attention_mask.dim() == 2:
        return None if attention_mask is None else attention_mask.bool()
    if attention_mask.dim() != 4:
        raise ValueError(f"attention_mask must be 2-D or 4-D, got shape {tuple(attention_mask.shape)}")
    per_key = key_only(attention_mask)
    if attention_mask.dtype == torch.bool:
        if per_key:
            return attention_mask[:, 0, 0, :]
        # A general boolean mask (True = attend) as the additive mask the reference understands.
        return torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device).masked_fill(
            ~attention_mask, float("-inf")
        )
    return attention_mask[:, :1, :1, :] if per_key else attention_mask


def electra_fast_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function: bidirectional attention with key padding and in-kernel dropout."""
    if getattr(module, "is_causal", False) and query.shape[2] > 1:
        raise NotImplementedError("attn_implementation='electra_fast' is bidirectional: causal (decoder) models "
                                  "need another attention implementation")
    dropout = float(dropout)
    seed = _dropout_seed(module, kwargs) if dropout > 0 else 0
    out = ops.attention(query, key, value, _key_mask(attention_mask, query.dtype), dropout_p=dropout,
                        scale=scaling, seed=seed)
    return out.transpose(1, 2), None


def electra_fast_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None,
                      attention_mask=None, **kwargs):
    """transformers mask function: the 2-D padding mask for plain bidirectional attention, else sdpa's mask."""
    from transformers.masking_utils import bidirectional_mask_function, sdpa_mask

    if mask_function is bidirectional_mask_function or mask_function is None:
        return None if attention_mask is None else attention_mask[:, -kv_length:]
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, mask_function=mask_function, attention_mask=attention_mask, **kwargs)


def register() -> None:
    """Make ``attn_implementation="electra_fast"`` available in transformers (idempotent)."""
    # Import everything first: registering the attention without its mask function would drop padding.
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, bidirectional_mask_function, sdpa_mask  # noqa: F401

    AttentionInterface.register(NAME, electra_fast_attention)
    AttentionMaskInterface.register(NAME, electra_fast_mask)


def is_registered() -> bool:
    """Whether ``attn_implementation="electra_fast"`` is available in this process."""
    from transformers import AttentionInterface

    return NAME in AttentionInterface._global_mapping
