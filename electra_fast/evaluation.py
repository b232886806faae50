"""Evidence that a pre-training run learns: a held-out split of the corpus and what the models do on it.

ELECTRA's training metrics are hard to read: the discriminator's accuracy starts at the "nothing replaced"
rate and the total loss may creep up while the generator improves. So ``electra-fast pretrain`` holds out
documents and, at step 0 (the untrained baseline), every ``--eval-every`` steps and at the end, measures:

* ``eval_rtd_auc`` and ``eval_rtd_balanced_accuracy``: how well the discriminator tells the generator's
  replacements from original tokens (ROC AUC of its logits; balanced accuracy at probability 0.5);
* ``eval_random_auc`` and ``eval_random_balanced_accuracy``: the same for uniformly random replacements of
  ``mask_prob`` of the tokens, a fixed probe that does not move with the generator;
* ``eval_mlm_loss`` and ``eval_mlm_accuracy``: the generator's cross-entropy and arg-max accuracy at the
  masked positions.

Everything is computed on tokens that are neither padding nor special tokens, in eval mode (no dropout), with
fixed seeds: the same held-out batches, masks and probes at every evaluation, so the numbers are comparable
across steps, and the training run's random state is not touched (a resumed run stays exact).

Which documents are held out depends only on their text (a hash of it against ``--eval-fraction``), so the
split is the same for every seed and every order of reading; preparation (electra_fast/prepare_data.py) writes
them to the ``heldout`` split, and the evaluation reads its first ``--eval-sequences`` rows.
"""

from __future__ import annotations

import hashlib
from typing import Optional

import torch
import torch.nn.functional as F

from .contracts import special_id_set
from .data import Document

EVAL_FIELDS = ("eval_rtd_auc", "eval_rtd_balanced_accuracy", "eval_random_auc", "eval_random_balanced_accuracy",
               "eval_mlm_loss", "eval_mlm_accuracy")


def is_held_out(document: Document, fraction: float) -> bool:
    """Whether a document belongs to the held-out split: a 64-bit hash of its text below ``fraction``."""
    digest = hashlib.blake2b("\n".join(document).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") < fraction * 2**64


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> Optional[float]:
    """Area under the ROC curve: the probability that a positive scores above a negative (ties count 1/2),
    from the Mann-Whitney rank sum with tied scores given their average rank. None without both classes."""
    scores, labels = scores.double().flatten(), labels.bool().flatten()
    positives = int(labels.sum())
    negatives = labels.numel() - positives
    if positives == 0 or negatives == 0:
        return None
    order = scores.argsort()
    _, group, counts = torch.unique_consecutive(scores[order], return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    average_rank = ends - (counts.double() - 1) / 2  # mean of the 1-based ranks ends - count + 1 .. ends
    ranks = torch.empty_like(scores)
    ranks[order] = average_rank[group]
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def balanced_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> Optional[float]:
    """Mean of the recall on each class, predicting "replaced" where the logit is > 0 (probability > 0.5)."""
    predicted, labels = logits.flatten() > 0, labels.bool().flatten()
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return None
    true_positive_rate = int((predicted & labels).sum()) / positives
    true_negative_rate = int((~predicted & ~labels).sum()) / negatives
    return (true_positive_rate + true_negative_rate) / 2


def evaluation_seed(seed: int, batch_index: int) -> int:
    """The seed of held-out batch ``batch_index``: fixed for the run, apart from the training steps' seeds."""
    digest = hashlib.blake2b(f"electra-fast:eval:{seed}:{batch_index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def random_replacements(input_ids: torch.Tensor, scored: torch.Tensor, probability: float, allowed_ids: torch.Tensor,
                        generator: torch.Generator) -> torch.Tensor:
    """Each scored token replaced with ``probability`` by a uniformly drawn allowed id other than itself."""
    replace = (torch.rand(input_ids.shape, generator=generator) < probability).to(input_ids.device) & scored
    index = torch.randint(len(allowed_ids), input_ids.shape, generator=generator).to(input_ids.device)
    candidate = allowed_ids[index]
    candidate = torch.where(candidate == input_ids, allowed_ids[(index + 1) % len(allowed_ids)], candidate)
    return torch.where(replace, candidate, input_ids)


@torch.no_grad()
def evaluate(model, batches: list, device: torch.device, autocast_dtype: Optional[torch.dtype], seed: int) -> dict:
    """The EVAL_FIELDS of ``model`` (an ElectraPretrainer) on the held-out ``batches``; None where undefined."""
    was_training = model.training
    model.eval()
    objective = model.objective
    specials = torch.tensor(special_id_set(objective.special_token_ids, objective.mask_token_id), device=device)
    vocabulary = torch.arange(model.vocab_size, device=device)
    allowed_ids = vocabulary[~torch.isin(vocabulary, specials)]
    probe_generator = torch.Generator().manual_seed(evaluation_seed(seed, -1))
    rtd_scores, rtd_labels, random_scores, random_labels = [], [], [], []
    mlm_loss_sum = mlm_correct = mlm_slots = 0.0
    # The generator head's input at the masked slots [B * P, E], kept as the model's forward computes it, so
    # that the full logits there (for the arg-max accuracy) need only the LM head, not the encoder again.
    slot_states = []
    hook = model.generator.generator_predictions.register_forward_hook(
        lambda module, inputs, output: slot_states.append(output))
    try:
        for index, batch in enumerate(batches):
            input_ids, attention_mask, token_type_ids = (batch[key].to(device) for key in
                                                         ("input_ids", "attention_mask", "token_type_ids"))
            scored = attention_mask.bool() & ~torch.isin(input_ids, specials)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                out = model(input_ids, attention_mask, token_type_ids=token_type_ids, seed=evaluation_seed(seed, index))
                logits = model.generator.generator_lm_head(slot_states.pop())
                corrupted = random_replacements(input_ids, scored, objective.mask_prob, allowed_ids, probe_generator)
                probe_logits = model.discriminator(corrupted, attention_mask=attention_mask,
                                                   token_type_ids=token_type_ids).logits
            weights, targets = out.masked.weights.float().flatten(), out.masked.targets.flatten()
            losses = F.cross_entropy(logits.float(), targets, reduction="none")
            mlm_loss_sum += float((losses * weights).sum())
            mlm_correct += float(((logits.argmax(-1) == targets).float() * weights).sum())
            mlm_slots += float(weights.sum())
            rtd_scores.append(out.rtd_logits.float()[scored].cpu())
            rtd_labels.append((out.corrupted_ids != input_ids)[scored].cpu())
            random_scores.append(probe_logits.float()[scored].cpu())
            random_labels.append((corrupted != input_ids)[scored].cpu())
    finally:
        hook.remove()
        model.train(was_training)
    scores, labels = torch.cat(rtd_scores), torch.cat(rtd_labels)
    probe_scores, probe_labels = torch.cat(random_scores), torch.cat(random_labels)
    return {
        "eval_rtd_auc": roc_auc(scores, labels),
        "eval_rtd_balanced_accuracy": balanced_accuracy(scores, labels),
        "eval_random_auc": roc_auc(probe_scores, probe_labels),
        "eval_random_balanced_accuracy": balanced_accuracy(probe_scores, probe_labels),
        "eval_mlm_loss": mlm_loss_sum / mlm_slots if mlm_slots else None,
        "eval_mlm_accuracy": mlm_correct / mlm_slots if mlm_slots else None,
    }
