"""Model sizes of the ELECTRA paper (docs/design.md §1.8) as Hugging Face ElectraConfig pairs.

The generator has as many layers as the discriminator, an FFN of 4x its hidden size and
max(1, hidden // 64) heads; both share the embedding size so that embeddings can be shared.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import ElectraConfig


@dataclass(frozen=True)
class Preset:
    hidden_size: int
    embedding_size: int
    num_layers: int
    num_heads: int
    generator_hidden_size: int
    mask_prob: float
    learning_rate: float
    max_position_embeddings: int = 512


PRESETS = {
    # A couple of narrow layers: trains in minutes on a CPU (tests, the README's demo run). Its learning rate is
    # small's: at 1e-3 the README's 300-step run collapsed its discriminator to a constant by step 200 (held-out
    # ROC AUC 0.87 at step 100, then 0.50, RTD loss at the base rate's entropy); at 5e-4 it holds 0.87.
    "tiny": Preset(128, 64, 2, 2, 64, 0.15, 5e-4, max_position_embeddings=256),
    "small": Preset(256, 128, 12, 4, 64, 0.15, 5e-4),
    "base": Preset(768, 768, 12, 12, 256, 0.15, 2e-4),
    "large": Preset(1024, 1024, 24, 16, 256, 0.25, 2e-4),
}

_SIZE_KEYS = {"hidden_size", "embedding_size", "num_layers", "num_heads", "generator_hidden_size",
              "max_position_embeddings"}


def get_preset(name: str, **overrides) -> Preset:
    """The preset ``name`` with size overrides (hidden_size, embedding_size, num_layers, num_heads,
    generator_hidden_size, max_position_embeddings, mask_prob, learning_rate)."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    unknown = set(overrides) - _SIZE_KEYS - {"mask_prob", "learning_rate"}
    if unknown:
        raise ValueError(f"unknown preset overrides {sorted(unknown)}; expected some of {sorted(_SIZE_KEYS)}")
    values = {k: v for k, v in PRESETS[name].__dict__.items()}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Preset(**values)


def generator_heads(generator_hidden_size: int) -> int:
    return max(1, generator_hidden_size // 64)


def electra_configs(preset: Preset, vocab_size: int, *, pad_token_id: int = 0, **config_kwargs):
    """(generator ElectraConfig, discriminator ElectraConfig) for ``preset``."""
    if preset.hidden_size % preset.num_heads:
        raise ValueError(f"hidden_size ({preset.hidden_size}) must be divisible by num_heads ({preset.num_heads})")
    common = dict(
        vocab_size=vocab_size,
        embedding_size=preset.embedding_size,
        num_hidden_layers=preset.num_layers,
        max_position_embeddings=preset.max_position_embeddings,
        pad_token_id=pad_token_id,
        **config_kwargs,
    )
    discriminator = ElectraConfig(
        hidden_size=preset.hidden_size,
        num_attention_heads=preset.num_heads,
        intermediate_size=4 * preset.hidden_size,
        **common,
    )
    generator_hidden = preset.generator_hidden_size
    generator = ElectraConfig(
        hidden_size=generator_hidden,
        num_attention_heads=generator_heads(generator_hidden),
        intermediate_size=4 * generator_hidden,
        **common,
    )
    return generator, discriminator
