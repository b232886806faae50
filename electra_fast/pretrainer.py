"""ELECTRA pre-training: a generator and a discriminator from Hugging Face, and the official objective.

``ElectraPretrainer`` wraps ``ElectraForMaskedLM`` (generator) and ``ElectraForPreTraining``
(discriminator), shares their embeddings (docs/design.md §1.7) and computes, for one batch:

    mask_tokens -> generator encoder -> head at the P slots -> loss + Gumbel sample -> corrupted ids
    -> discriminator encoder -> RTD loss;   loss = gen_weight * mlm + disc_weight * rtd

through the ops in ``electra_fast.ops``, so Triton kernels run wherever they can (``fused=True``).

It is a Hugging Face ``PreTrainedModel``, so that ``Trainer`` and ``accelerate`` loops take it as it is:
without ``seed=`` the step's seed comes from a counter in the state dict (``electra_fast.seed_counter``), the
output is a ``ModelOutput`` with ``loss``, and ``save_pretrained`` / ``from_pretrained`` write and read the
whole pre-trainer plus ``discriminator/`` and ``generator/`` as plain Hugging Face checkpoints.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn
from transformers import ElectraForMaskedLM, ElectraForPreTraining, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from . import hf_attention, ops
from .backend import use_backend
from .objective import ElectraObjective
from .outputs import MaskedTokens
from .presets import electra_configs, get_preset
from .rng import check_seed
from .seed_counter import SeedCounter

WEIGHTS_NAME = "model.safetensors"  # the whole pre-trainer, next to config.json (Hugging Face's names)


@dataclass
class ElectraPretrainingOutput(ModelOutput):
    """One step's loss and metrics; a ``ModelOutput`` (``out.loss``, ``out["loss"]``, ``out[0]``) as
    ``Trainer`` expects. Every field is set by ``ElectraPretrainer``."""

    loss: Optional[torch.Tensor] = None  # gen_weight * mlm_loss + disc_weight * rtd_loss
    mlm_loss: Optional[torch.Tensor] = None
    rtd_loss: Optional[torch.Tensor] = None
    generator_accuracy: Optional[torch.Tensor] = None  # fraction of real slots whose sample equals the original
    discriminator_accuracy: Optional[torch.Tensor] = None  # over non-padding tokens
    replaced_fraction: Optional[torch.Tensor] = None  # fraction of non-padding tokens the discriminator sees replaced
    discriminator_precision: Optional[torch.Tensor] = None
    discriminator_recall: Optional[torch.Tensor] = None
    masked: Optional[MaskedTokens] = field(default=None, repr=False)
    corrupted_ids: Optional[torch.Tensor] = field(default=None, repr=False)
    rtd_logits: Optional[torch.Tensor] = field(default=None, repr=False)


class ElectraPretrainerConfig(PretrainedConfig):
    """The pre-trainer's own ``config.json``: its ``ElectraObjective`` (the encoders' configs are those of
    ``generator/`` and ``discriminator/``)."""

    model_type = "electra_fast_pretrainer"
    # Trainer.evaluate reports the loss and gathers the rest of the output unless told not to.
    keys_to_ignore_at_inference = [f.name for f in dataclasses.fields(ElectraPretrainingOutput) if f.name != "loss"]

    def __init__(self, objective: Optional[dict] = None, **kwargs):
        self.objective = dict(objective or {})
        super().__init__(**kwargs)


def lm_head_parameters(lm_head: nn.Linear, dtype: torch.dtype) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The LM head's (weight, bias) in the activations' dtype: under autocast the matmul runs in it, as
    F.linear would (autocast does not reach the custom op)."""
    weight, bias = lm_head.weight, lm_head.bias
    if weight.dtype == dtype:
        return weight, bias
    return weight.to(dtype), None if bias is None else bias.to(dtype)


class GDESWordEmbedding(nn.Module):
    """DeBERTa-v3 gradient-disentangled embedding: ``E_D = stop_grad(E_G) + delta``, delta starting at 0."""

    def __init__(self, generator_embedding: nn.Embedding):
        super().__init__()
        # Held outside the module tree: the generator owns (and saves, and optimises) this parameter.
        self._generator_embedding = [generator_embedding]
        self.padding_idx = generator_embedding.padding_idx
        self.delta = nn.Parameter(torch.zeros_like(generator_embedding.weight))

    @property
    def weight(self) -> torch.Tensor:
        return self._generator_embedding[0].weight.detach() + self.delta

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight, self.padding_idx)


def corrupt_ids(input_ids: torch.Tensor, masked: MaskedTokens, samples: torch.Tensor) -> torch.Tensor:
    """The discriminator's input (docs/design.md §1.4): each real slot's sample [B, P] goes into its position of the
    original ids, kept positions included. Padding slots scatter into a spare column so they can never
    overwrite a real slot."""
    seq_len = input_ids.shape[1]
    scatter_at = torch.where(masked.weights > 0, masked.positions, seq_len)
    sampled = torch.cat([input_ids, input_ids[:, :1]], dim=1).scatter(1, scatter_at, samples.to(input_ids.dtype))
    return torch.where(masked.is_masked, sampled[:, :seq_len], input_ids)


@torch.no_grad()
def sample_accuracy(samples: torch.Tensor, masked: MaskedTokens) -> torch.Tensor:
    """The fraction of real slots whose sample [B, P] equals the original token (0 without a real slot)."""
    correct = (samples == masked.targets) & (masked.weights > 0)
    return correct.sum() / masked.weights.sum().clamp(min=1)


class ElectraPretrainer(SeedCounter, PreTrainedModel):
    config_class = ElectraPretrainerConfig
    accepts_loss_kwargs = False  # Trainer then scales the loss for gradient accumulation itself

    def __init__(self, generator: ElectraForMaskedLM, discriminator: ElectraForPreTraining, *,
                 objective: ElectraObjective, fused: bool = True):
        if not isinstance(generator, ElectraForMaskedLM):
            raise TypeError(f"generator must be a transformers ElectraForMaskedLM, got {type(generator).__name__}")
        if not isinstance(discriminator, ElectraForPreTraining):
            raise TypeError("discriminator must be a transformers ElectraForPreTraining, got "
                            f"{type(discriminator).__name__}")
        if not isinstance(objective, ElectraObjective):
            raise TypeError(f"objective must be an ElectraObjective, got {type(objective).__name__}")
        gen_config, disc_config = generator.config, discriminator.config
        if gen_config.vocab_size != disc_config.vocab_size:
            raise ValueError("generator and discriminator vocab sizes differ: "
                             f"{gen_config.vocab_size} vs {disc_config.vocab_size}")
        if objective.mask_token_id >= gen_config.vocab_size:
            raise ValueError(f"objective.mask_token_id must be < vocab_size ({gen_config.vocab_size}), "
                             f"got {objective.mask_token_id}")
        if objective.embedding_sharing != "none" and gen_config.embedding_size != disc_config.embedding_size:
            raise ValueError(
                "shared embeddings need one embedding_size: generator has "
                f"{gen_config.embedding_size}, discriminator {disc_config.embedding_size}"
            )
        super().__init__(ElectraPretrainerConfig(objective=dataclasses.asdict(objective)))
        self.generator = generator
        self.discriminator = discriminator
        self.objective = objective
        self.fused = fused
        self._share_embeddings(objective.embedding_sharing)
        # Saved once: model.safetensors leaves the other names out, and Trainer, finding exactly these missing
        # when it resumes, knows them for tied weights.
        self._keys_to_ignore_on_save = self._shared_state_aliases()
        # Fused: both encoders run electra-fast's attention (kernel with Philox dropout keyed by the step seed).
        self.fast_attention = fused and hf_attention.is_registered()
        if self.fast_attention:
            for model in (generator, discriminator):
                model.set_attn_implementation(hf_attention.NAME)

    def _share_embeddings(self, sharing: str) -> None:
        gen_embeddings = self.generator.electra.embeddings
        # The generator's LM head is always tied to its word embeddings (HF ties them when the config says so).
        self.generator.generator_lm_head.weight = gen_embeddings.word_embeddings.weight
        if sharing == "tied":
            self.discriminator.electra.embeddings = gen_embeddings
        elif sharing == "gdes":
            disc_embeddings = self.discriminator.electra.embeddings
            disc_embeddings.word_embeddings = GDESWordEmbedding(gen_embeddings.word_embeddings)
            # Positions, token types and the embedding LayerNorm stay shared as in "tied".
            disc_embeddings.position_embeddings = gen_embeddings.position_embeddings
            disc_embeddings.token_type_embeddings = gen_embeddings.token_type_embeddings
            disc_embeddings.LayerNorm = gen_embeddings.LayerNorm

    @classmethod
    def from_preset(cls, name: str, *, vocab_size: int, mask_token_id: int, special_token_ids: Sequence[int] = (),
                    pad_token_id: int = 0, fused: bool = True, config_kwargs: Optional[dict] = None,
                    **overrides) -> "ElectraPretrainer":
        """A new pre-trainer at the paper's sizes ("tiny", "small", "base", "large").

        ``overrides`` may hold preset sizes (hidden_size, num_layers, ...) and ElectraObjective fields.
        """
        objective_fields = {f.name for f in dataclasses.fields(ElectraObjective)}
        objective_kwargs = {k: v for k, v in overrides.items() if k in objective_fields}
        size_kwargs = {k: v for k, v in overrides.items() if k not in objective_fields}
        preset = get_preset(name, **size_kwargs)
        objective_kwargs.setdefault("mask_prob", preset.mask_prob)
        gen_config, disc_config = electra_configs(preset, vocab_size, pad_token_id=pad_token_id,
                                                  **(config_kwargs or {}))
        objective = ElectraObjective(mask_token_id=mask_token_id, special_token_ids=special_token_ids,
                                     **objective_kwargs)
        return cls(ElectraForMaskedLM(gen_config), ElectraForPreTraining(disc_config), objective=objective, fused=fused)

    @property
    def vocab_size(self) -> int:
        return self.generator.config.vocab_size

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                token_type_ids: Optional[torch.Tensor] = None, seed=None, return_loss: bool = True,
                **unused) -> ElectraPretrainingOutput:
        """One step of the objective; ``token_type_ids`` (segment A = 0, B = 1) go to both encoders.

        ``seed`` names every random choice of the step (masks, samples, attention dropout). Without it the
        seed comes from ``seed_counter``, which counts training-mode forwards and is saved in the state dict
        (``electra_fast.seed_counter``). The loss is always computed: ``return_loss=True`` in the signature
        tells ``Trainer`` to report it when it evaluates. Other keyword arguments (columns a data collator
        passes along, such as ``special_tokens_mask``) are ignored.
        """
        seed = self.next_step_seed() if seed is None else check_seed(seed)
        if token_type_ids is not None and token_type_ids.shape != input_ids.shape:
            raise ValueError(f"token_type_ids must have the shape of input_ids {tuple(input_ids.shape)}, "
                             f"got {tuple(token_type_ids.shape)}")
        if self.fused:
            return self._forward(input_ids, attention_mask, token_type_ids, seed)
        with use_backend("reference"):
            return self._forward(input_ids, attention_mask, token_type_ids, seed)

    def _encoder_kwargs(self, attention_mask, token_type_ids, seed: int, encoder_index: int) -> dict:
        """Encoder inputs besides the ids; with fast attention, the encoder's dropout seed for this step
        (generator 0, discriminator 1: their layers share layer_idx)."""
        kwargs = {"attention_mask": attention_mask, "token_type_ids": token_type_ids}
        if self.fast_attention:
            kwargs[hf_attention.SEED_KWARG] = hf_attention.encoder_seed(seed, encoder_index)
        return kwargs

    def _forward(self, input_ids, attention_mask, token_type_ids, seed) -> ElectraPretrainingOutput:
        obj = self.objective
        batch = input_ids.shape[0]
        masked = ops.mask_tokens(
            input_ids, attention_mask, mask_token_id=obj.mask_token_id, special_token_ids=obj.special_token_ids,
            mask_prob=obj.mask_prob, max_predictions=obj.max_predictions, mask_token_prob=obj.mask_token_prob,
            random_token_prob=obj.random_token_prob, vocab_size=self.vocab_size, mode=obj.mode, seed=seed,
        )

        # Generator: encoder on the masked ids, head only at the P slots.
        gen_hidden = self.generator.electra(
            masked.input_ids, **self._encoder_kwargs(attention_mask, token_type_ids, seed, 0)
        ).last_hidden_state
        slots = masked.positions.shape[1]
        slot_hidden = gen_hidden.gather(1, masked.positions[..., None].expand(-1, -1, gen_hidden.shape[-1]))
        head_hidden = self.generator.generator_predictions(slot_hidden.reshape(batch * slots, -1))
        weight, bias = lm_head_parameters(self.generator.generator_lm_head, head_hidden.dtype)
        mlm_loss, samples = ops.generator_loss_and_sample(
            head_hidden, weight, bias, masked.targets.reshape(-1), masked.weights.reshape(-1),
            temperature=obj.temperature, disallow_correct=obj.disallow_correct, seed=seed, strategy=obj.generator_head,
        )
        samples = samples.view(batch, slots)

        corrupted_ids = corrupt_ids(input_ids, masked, samples)

        disc_hidden = self.discriminator.electra(
            corrupted_ids, **self._encoder_kwargs(attention_mask, token_type_ids, seed, 1)
        ).last_hidden_state
        head = self.discriminator.discriminator_predictions
        rtd = ops.rtd_loss(
            disc_hidden, head.dense.weight, head.dense.bias, head.dense_prediction.weight, head.dense_prediction.bias,
            corrupted_ids, input_ids, attention_mask, activation=self.discriminator.config.hidden_act,
        )
        loss = obj.gen_weight * mlm_loss + obj.disc_weight * rtd.loss
        generator_accuracy = sample_accuracy(samples, masked)
        return ElectraPretrainingOutput(
            loss=loss, mlm_loss=mlm_loss, rtd_loss=rtd.loss, generator_accuracy=generator_accuracy,
            discriminator_accuracy=rtd.accuracy, replaced_fraction=rtd.replaced_fraction,
            discriminator_precision=rtd.precision, discriminator_recall=rtd.recall,
            masked=masked, corrupted_ids=corrupted_ids, rtd_logits=rtd.logits,
        )

    def export_models(self) -> tuple[ElectraForMaskedLM, ElectraForPreTraining]:
        """Plain Hugging Face models for ``save_pretrained`` (GDES embeddings are materialised)."""
        if self.objective.embedding_sharing != "gdes":
            return self.generator, self.discriminator
        import copy

        discriminator = copy.deepcopy(self.discriminator)
        gdes = self.discriminator.electra.embeddings.word_embeddings
        plain = nn.Embedding(*gdes.delta.shape, padding_idx=gdes.padding_idx)
        plain.weight.data.copy_(gdes.weight.detach())
        discriminator.electra.embeddings.word_embeddings = plain
        return self.generator, discriminator

    def save_pretrained(self, output_dir: str, *, state_dict: Optional[dict] = None, is_main_process: bool = True,
                        **hf_kwargs) -> None:
        """Write the pre-trainer into ``output_dir`` (Hugging Face's layout, ``from_pretrained`` reads it back):

        * ``discriminator/`` and ``generator/``: plain Hugging Face checkpoints (``ElectraForPreTraining``,
          ``ElectraForMaskedLM``; GDES embeddings materialised), e.g. for
          ``ElectraForSequenceClassification.from_pretrained(output_dir + "/discriminator")``;
        * ``config.json`` (the objective) and ``model.safetensors`` (the whole state, seed counter included,
          each shared tensor once), from which ``from_pretrained`` and ``Trainer``'s resume restore it exactly.

        ``Trainer.save_model`` calls this with ``state_dict`` (written instead of ``self.state_dict()``) and
        ``is_main_process`` (only that process writes); its other keyword arguments (``safe_serialization``,
        ...) are accepted and ignored: the weights are always safetensors.
        """
        if not is_main_process:
            return
        if os.path.isfile(output_dir):
            raise ValueError(f"output_dir must be a directory, got the file {output_dir}")
        os.makedirs(output_dir, exist_ok=True)
        generator, discriminator = self.export_models()
        discriminator.save_pretrained(os.path.join(output_dir, "discriminator"))
        generator.save_pretrained(os.path.join(output_dir, "generator"))
        self.config.objective = dataclasses.asdict(self.objective)
        self.config.save_pretrained(output_dir)
        state = self.state_dict() if state_dict is None else state_dict
        tensors = {name: tensor.detach().contiguous() for name, tensor in state.items()
                   if name not in self._keys_to_ignore_on_save}
        safetensors.torch.save_file(tensors, os.path.join(output_dir, WEIGHTS_NAME), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, path: str, *, objective: Optional[ElectraObjective] = None,
                        fused: bool = True) -> "ElectraPretrainer":
        """The pre-trainer that ``save_pretrained`` (or ``Trainer``, in a ``checkpoint-N`` folder) wrote into
        ``path``, in eval mode as Hugging Face's ``from_pretrained`` gives it.

        The encoders come from ``path/generator`` and ``path/discriminator``, the objective from
        ``path/config.json`` unless ``objective`` is given (folders written before it existed need it), and
        ``path/model.safetensors``, where present, restores the exact state (GDES deltas, the seed counter).
        """
        path = str(path)
        for part in ("generator", "discriminator"):
            if not os.path.isdir(os.path.join(path, part)):
                raise FileNotFoundError(f"path {path!r} has no {part}/ folder (ElectraPretrainer.save_pretrained "
                                        "writes one)")
        if objective is None:
            if not os.path.isfile(os.path.join(path, "config.json")):
                raise ValueError(f"path {path!r} has no config.json (written by an older electra-fast): pass "
                                 "objective=ElectraObjective(...)")
            objective = ElectraObjective(**ElectraPretrainerConfig.from_pretrained(path).objective)
        generator = ElectraForMaskedLM.from_pretrained(os.path.join(path, "generator"))
        discriminator = ElectraForPreTraining.from_pretrained(os.path.join(path, "discriminator"))
        model = cls(generator, discriminator, objective=objective, fused=fused)
        weights = os.path.join(path, WEIGHTS_NAME)
        if os.path.isfile(weights):
            safetensors.torch.load_model(model, weights)  # strict; the shared tensors' other names load with them
        return model.eval()

    def _shared_state_aliases(self) -> list:
        """State-dict names of tensors already listed under an earlier name (the shared embeddings, the LM
        head tied to them)."""
        seen = set()
        aliases = []
        for name, tensor in self.state_dict(keep_vars=True).items():
            if id(tensor) in seen:
                aliases.append(name)
            seen.add(id(tensor))
        return aliases

    def tie_weights(self, *args, **kwargs) -> None:
        """Nothing to tie again: shared embeddings are the same modules, never copies. (``Trainer`` calls this
        after loading a checkpoint whose missing keys are exactly ``_keys_to_ignore_on_save``.)"""
