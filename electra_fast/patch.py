"""``apply_fast_electra``: swap electra-fast's fused losses (and attention) into existing HF Electra models.

For code people already have: ``apply_fast_electra(model)`` patches the instance in place and returns it.

- ``ElectraForMaskedLM``: with ``labels``, the LM head runs only at labelled positions (labels != -100)
  through ``ef.generator_loss_and_sample``; the vocabulary logits are never materialised and the output's
  ``logits`` is None. Without labels the original forward runs.
- ``ElectraForPreTraining``: with ``labels``, the head and the BCE run through ``ef.rtd_loss``.
- Any Electra model: ``attention=True`` selects the "electra_fast" attention implementation when it is
  registered with transformers (``import electra_fast`` registers it where the kernel exists).
"""

from __future__ import annotations

import types

import torch
from transformers import ElectraForMaskedLM, ElectraForPreTraining
from transformers.modeling_outputs import MaskedLMOutput
from transformers.models.electra.modeling_electra import ElectraForPreTrainingOutput

from . import hf_attention, ops
from .pretrainer import lm_head_parameters


def _encode(model, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, kwargs):
    return model.electra(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                         position_ids=position_ids, inputs_embeds=inputs_embeds, return_dict=True, **kwargs)


def _fast_masked_lm_forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                            inputs_embeds=None, labels=None, **kwargs):
    if labels is None:
        return self._electra_fast_original_forward(input_ids, attention_mask, token_type_ids, position_ids,
                                                   inputs_embeds, labels=None, **kwargs)
    outputs = _encode(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, kwargs)
    labelled = labels != -100
    head_hidden = self.generator_predictions(outputs.last_hidden_state[labelled])
    if head_hidden.shape[0] == 0:  # nothing labelled: HF's mean over no tokens would be NaN; we give 0
        loss = outputs.last_hidden_state.sum() * 0.0
    else:
        weight, bias = lm_head_parameters(self.generator_lm_head, head_hidden.dtype)
        loss, _ = ops.generator_loss_and_sample(head_hidden, weight, bias, labels[labelled])
    return MaskedLMOutput(loss=loss, logits=None, hidden_states=outputs.hidden_states, attentions=outputs.attentions)


def _fast_pretraining_forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                              inputs_embeds=None, labels=None, **kwargs):
    if labels is None:
        return self._electra_fast_original_forward(input_ids, attention_mask, token_type_ids, position_ids,
                                                   inputs_embeds, labels=None, **kwargs)
    outputs = _encode(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, kwargs)
    head = self.discriminator_predictions
    # rtd_loss labels a token replaced where corrupted != original: comparing labels with 0 gives labels.
    rtd = ops.rtd_loss(outputs.last_hidden_state, head.dense.weight, head.dense.bias, head.dense_prediction.weight,
                       head.dense_prediction.bias, labels.long(), torch.zeros_like(labels, dtype=torch.long),
                       attention_mask, activation=self.config.hidden_act)
    return ElectraForPreTrainingOutput(loss=rtd.loss, logits=rtd.logits, hidden_states=outputs.hidden_states,
                                       attentions=outputs.attentions)


_FAST_FORWARDS = {ElectraForMaskedLM: _fast_masked_lm_forward, ElectraForPreTraining: _fast_pretraining_forward}


def apply_fast_electra(model, *, losses: bool = True, attention: bool = True):
    """Patch ``model`` (an HF Electra model) in place to use electra-fast's fused paths; returns it."""
    if not hasattr(model, "config") or getattr(model.config, "model_type", None) != "electra":
        raise TypeError(f"model must be a transformers Electra model, got {type(model).__name__}")
    if losses:
        for cls, forward in _FAST_FORWARDS.items():
            if isinstance(model, cls) and not hasattr(model, "_electra_fast_original_forward"):
                model._electra_fast_original_forward = model.forward
                model.forward = types.MethodType(forward, model)
    if attention and hf_attention.is_registered():
        model.set_attn_implementation(hf_attention.NAME)
    return model
