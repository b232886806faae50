"""``electra_fast.compat.Electra``: lucidrains' ``electra_pytorch.Electra`` (electra-pytorch 0.1), run by
electra-fast. The same constructor, the same ``Results``, the same state-dict names; code written for
electra-pytorch changes its import only::

    from electra_fast.compat import Electra  # was: from electra_pytorch import Electra

* Hugging Face models as they are (an ``ElectraForMaskedLM`` generator, an ``ElectraForPreTraining``
  discriminator, no ``discr_dim``) run electra-fast's fused step, ``ElectraPretrainer``: the generator's head
  only at the masked slots (no [B, L, V] logits), electra-fast attention, the fused RTD head and loss. When the
  two already share their word embeddings, the discriminator takes the generator's whole embedding module
  (positions, token types and LayerNorm too, as the official recipe shares them).
* Any other callables (a generator mapping ids to logits [B, L, V], or to an output with ``.logits``; a
  discriminator mapping ids to one logit per token, or, with ``discr_dim`` and ``discr_layer``, a network
  whose layer gives hidden states) still get electra-fast's masking (``mask_tokens``, on the device, fixed
  shapes), the MLM loss and a Gumbel-max sample only at the masked slots, and the RTD loss over non-padding
  tokens. What electra-fast cannot do inside an opaque callable: skip the generator's full [B, L, V] logits,
  fuse the generator's head or the discriminator's head with the losses, or swap in its attention. Samples
  there draw their Gumbel noise from torch's generator seeded by the step's seed.

Where it differs from electra-pytorch:

* Random choices follow a seed per step: ``forward(..., seed=)`` or, without one, a counter kept in the state
  dict (``seed_counter``); not torch's global generator.
* A row masks ``round(n * mask_prob)`` of its ``n`` non-padding tokens (at least 1), chosen without replacement
  among the candidates, where electra-pytorch masks ``ceil(mask_prob * candidates)``.
* ``random_token_prob`` is the share of the *chosen* positions that get a random id (BERT's 80/10/10);
  electra-pytorch replaces that share of all tokens. ``replace_prob + random_token_prob`` must be <= 1.
* ``gen_acc`` is the accuracy of the sampled tokens (what the discriminator sees), not of the argmax: the
  fused step never forms the logits an argmax needs.
* Padding is the ``attention_mask`` keyword when given, else ``input != pad_token_id``; ``disc_acc`` (the mean of
  the accuracies on masked and on unmasked tokens, as electra-pytorch's) leaves padding out.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ElectraForMaskedLM, ElectraForPreTraining

from . import ops
from .pretrainer import ElectraObjective, ElectraPretrainer, corrupt_ids, sample_accuracy
from .reference import weighted_mean
from .seed_counter import SeedCounter

Results = namedtuple("Results", ["loss", "mlm_loss", "disc_loss", "gen_acc", "disc_acc", "disc_labels",
                                 "disc_predictions"])


class HiddenLayerOutput(nn.Module):
    """Runs ``net`` and returns what its layer ``layer`` output: a name from ``net.named_modules()`` or an
    index into its children, -1 for the net's own output (electra-pytorch's ``HiddenLayerExtractor``, with the
    same state-dict names)."""

    def __init__(self, net: nn.Module, layer=-1):
        super().__init__()
        self.net = net
        self.layer = layer
        self._hidden = None
        if layer != -1:
            self._find_layer(layer).register_forward_hook(self._keep_output)

    def _find_layer(self, layer) -> nn.Module:
        if isinstance(layer, str):
            found = dict(self.net.named_modules()).get(layer)
        else:
            children = list(self.net.children())
            found = children[layer] if -len(children) <= layer < len(children) else None
        if found is None:
            names = [name for name, _ in self.net.named_children()]
            raise ValueError(f"discr_layer {layer!r} is not a layer of the discriminator (its children: {names})")
        return found

    def _keep_output(self, module, inputs, output):
        self._hidden = output

    def forward(self, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
        output = self.net(input_ids, **kwargs)
        if self.layer == -1:
            return output
        hidden, self._hidden = self._hidden, None
        if hidden is None:
            raise RuntimeError(f"discr_layer {self.layer!r} produced no output during the discriminator's forward")
        return hidden


def _logits(output, name: str) -> torch.Tensor:
    """A callable's logits: the tensor it returned, its ``.logits`` or the first element of its tuple."""
    logits = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
    if logits is None and isinstance(output, (tuple, list)) and output:
        logits = output[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must return logits (a tensor, an output with .logits or a tuple starting with "
                        f"them), got {type(output).__name__}")
    return logits


def _gumbel_max(logits: torch.Tensor, seed: int) -> torch.Tensor:
    """A sample per row from ``softmax(logits)``: ``argmax(logits + g)``, Gumbel noise from a torch generator
    seeded by ``seed``."""
    generator = torch.Generator(device=logits.device).manual_seed(seed)
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device).clamp_(min=1e-12)
    return (logits - torch.log(-torch.log(uniform))).argmax(dim=-1)


class Electra(SeedCounter, nn.Module):
    """electra-pytorch's ``Electra`` (see the module's docstring): ``forward(input, **kwargs)`` returns
    ``Results(loss, mlm_loss, disc_loss, gen_acc, disc_acc, disc_labels, disc_predictions)``; ``kwargs`` go
    to both models (``attention_mask`` and ``token_type_ids`` only, in the fused step), ``seed=`` names the
    step's random choices."""

    def __init__(self, generator, discriminator, *, num_tokens: Optional[int] = None, discr_dim: int = -1,
                 discr_layer=-1, mask_prob: float = 0.15, replace_prob: float = 0.85, random_token_prob: float = 0.0,
                 mask_token_id: int = 2, pad_token_id: int = 0, mask_ignore_token_ids: Sequence[int] = (),
                 disc_weight: float = 50.0, gen_weight: float = 1.0, temperature: float = 1.0):
        super().__init__()
        fused = isinstance(generator, ElectraForMaskedLM) and isinstance(discriminator, ElectraForPreTraining) \
            and discr_dim <= 0
        if random_token_prob > 0 and num_tokens is None and not fused:
            raise ValueError("num_tokens is required when random_token_prob > 0 (random ids are drawn below it)")
        self.generator = generator
        self.discriminator = discriminator
        self.reads_hidden_layer = discr_dim > 0  # the discriminator's logit is Linear(discr_dim, 1) of a layer
        if self.reads_hidden_layer:
            self.discriminator = nn.Sequential(HiddenLayerOutput(discriminator, layer=discr_layer),
                                               nn.Linear(discr_dim, 1))
        self.num_tokens = generator.config.vocab_size if fused and num_tokens is None else num_tokens
        self.pad_token_id = pad_token_id
        self.objective = ElectraObjective(
            mask_token_id=mask_token_id, special_token_ids=(*mask_ignore_token_ids, pad_token_id), mask_prob=mask_prob,
            mask_token_prob=replace_prob, random_token_prob=random_token_prob, temperature=temperature,
            gen_weight=gen_weight, disc_weight=disc_weight,
            embedding_sharing="tied" if fused and self._share_word_embeddings(generator, discriminator) else "none",
        )
        # The fused step holds no state beyond the two models, registered above under electra-pytorch's names;
        # it stays out of the module tree so that they are not registered twice.
        self._fused_step = [ElectraPretrainer(generator, discriminator, objective=self.objective)] if fused else []

    @staticmethod
    def _share_word_embeddings(generator: ElectraForMaskedLM, discriminator: ElectraForPreTraining) -> bool:
        return generator.electra.embeddings.word_embeddings.weight is \
            discriminator.electra.embeddings.word_embeddings.weight

    @property
    def fused(self) -> bool:
        """Whether ``forward`` runs electra-fast's fused step (Hugging Face Electra models)."""
        return bool(self._fused_step)

    def forward(self, input: torch.Tensor, **kwargs) -> Results:
        seed = kwargs.pop("seed", None)
        seed = self.next_step_seed() if seed is None else seed
        attention_mask = kwargs.get("attention_mask")
        valid = (input != self.pad_token_id) if attention_mask is None else attention_mask.bool()
        if self.fused:
            kwargs.pop("attention_mask", None)
            token_type_ids = kwargs.pop("token_type_ids", None)
            if kwargs:
                raise TypeError(f"the fused step takes attention_mask, token_type_ids and seed; got {sorted(kwargs)}")
            out = self._fused_step[0](input, valid.long(), token_type_ids=token_type_ids, seed=seed)
            return self._results(input, valid, out.loss, out.mlm_loss, out.rtd_loss, out.generator_accuracy,
                                 out.masked.is_masked, out.corrupted_ids, out.rtd_logits)
        return self._callables_step(input, valid, seed, kwargs)

    def _callables_step(self, input: torch.Tensor, valid: torch.Tensor, seed: int, kwargs: dict) -> Results:
        obj = self.objective
        masked = ops.mask_tokens(
            input, valid, mask_token_id=obj.mask_token_id, special_token_ids=obj.special_token_ids,
            mask_prob=obj.mask_prob, mask_token_prob=obj.mask_token_prob, random_token_prob=obj.random_token_prob,
            vocab_size=self.num_tokens, seed=seed,
        )
        logits = _logits(self.generator(masked.input_ids, **kwargs), "generator")
        batch, slots = masked.positions.shape
        slot_logits = logits.gather(1, masked.positions[..., None].expand(-1, -1, logits.shape[-1]))
        slot_logits = slot_logits.flatten(0, 1).float()
        targets, weights = masked.targets.flatten(), masked.weights.flatten()
        mlm_loss = weighted_mean(F.cross_entropy(slot_logits, targets, reduction="none"), weights)
        with torch.no_grad():
            samples = _gumbel_max(slot_logits / obj.temperature, seed).view(batch, slots)
        corrupted = corrupt_ids(input, masked, samples)

        if self.reads_hidden_layer:
            hidden_layer, to_logit = self.discriminator
            disc_logits = to_logit(hidden_layer(corrupted, **kwargs))
        else:
            disc_logits = _logits(self.discriminator(corrupted, **kwargs), "discriminator")
        disc_logits = disc_logits.reshape(input.shape).float()
        labels = (corrupted != input) & valid
        disc_loss = weighted_mean(F.binary_cross_entropy_with_logits(disc_logits, labels.float(), reduction="none"),
                                  valid.float())
        loss = obj.gen_weight * mlm_loss + obj.disc_weight * disc_loss
        return self._results(input, valid, loss, mlm_loss, disc_loss, sample_accuracy(samples, masked),
                             masked.is_masked, corrupted, disc_logits)

    @staticmethod
    def _results(input, valid, loss, mlm_loss, disc_loss, gen_acc, is_masked, corrupted, disc_logits) -> Results:
        with torch.no_grad():
            disc_labels = (input != corrupted).float()
            disc_predictions = (disc_logits > 0).float()  # electra-pytorch: round((sign(logit) + 1) / 2)
            correct = disc_predictions == disc_labels

            def accuracy(where):
                return (correct & where).sum() / where.sum().clamp(min=1)

            disc_acc = 0.5 * accuracy(is_masked & valid) + 0.5 * accuracy(~is_masked & valid)
        return Results(loss, mlm_loss, disc_loss, gen_acc, disc_acc, disc_labels, disc_predictions)
