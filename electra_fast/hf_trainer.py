"""Pieces for pre-training with Hugging Face ``Trainer`` (or any loop over a ``DataLoader``).

``ElectraPretrainer`` itself is the Trainer's model (it masks on the device and returns the loss);
``DataCollatorForElectra`` turns tokenized examples into its batches, packed as ``electra-fast pretrain`` packs
them; ``ElectraMetricsCallback`` puts the MLM and RTD losses and the accuracies into the Trainer's logs.
"""

from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import torch
from transformers import TrainerCallback

from .data import MIN_SHORT_LENGTH, PackedSequence, SequencePacker, collate, epoch_rng, pack_documents
from .pretrainer import ElectraPretrainer, ElectraPretrainingOutput


class DataCollatorForElectra:
    """Tokenized examples -> ``{input_ids, attention_mask, token_type_ids}``, int64 ``[rows, max_length]``.

    No masking: ``ElectraPretrainer`` masks inside its forward, on the device. Each example is a dict (a
    ``datasets`` row, a ``BatchEncoding``) whose ``input_ids`` are one list of token ids or a list of such
    lists (a document's lines); the tokenizer's [CLS], [SEP] and [PAD] ids in them are dropped, the rows get
    their own.

    * ``pack=True``, as ``electra-fast pretrain`` packs a dataset: each example is a document, cut into
      ``[CLS] A [SEP] B [SEP]`` rows of at most ``max_length`` tokens (a long document gives several rows and
      loses nothing; 10 % of rows hold one segment, 5 % aim at a random shorter length). So a batch of N
      examples gives as many rows as their documents fill, not N. Those choices are drawn from a generator
      seeded by ``seed`` and the batch's ids: the same batch always packs the same way, in every process and
      after a resume.
    * ``pack=False``: one row per example, ``[CLS] ids [SEP]`` truncated to ``max_length``.
    """

    def __init__(self, tokenizer, max_length: int = 128, pack: bool = True, seed: int = 0):
        for name in ("cls_token_id", "sep_token_id", "pad_token_id"):
            if getattr(tokenizer, name, None) is None:
                raise ValueError(f"tokenizer must have a {name[:-3]} ({name} is None); ELECTRA's rows are "
                                 "[CLS] A [SEP] B [SEP], padded")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < MIN_SHORT_LENGTH:
            raise ValueError(f"max_length must be an int >= {MIN_SHORT_LENGTH}, got {max_length!r}")
        self.tokenizer = tokenizer  # Trainer saves data_collator.tokenizer with the model
        self.max_length = max_length
        self.pack = pack
        self.seed = seed
        self._dropped_ids = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id}

    def __call__(self, examples: Sequence[dict]) -> dict:
        documents = [self._document(index, example) for index, example in enumerate(examples)]
        if self.pack:
            rows = self._packed_rows(documents)
        else:
            rows = [self._single_row([token for line in document for token in line]) for document in documents
                    if document]
        if not rows:
            raise ValueError(f"examples: none of the {len(examples)} examples holds a token to train on")
        return collate(rows, self.max_length, self.tokenizer.pad_token_id)

    def _document(self, index: int, example) -> list:
        """The example's lines of token ids, without special tokens or empty lines."""
        try:
            input_ids = example["input_ids"]
        except (KeyError, TypeError, IndexError):
            found = sorted(example) if isinstance(example, dict) else type(example).__name__
            raise ValueError(f"examples[{index}] must be a dict with 'input_ids' (token ids), got {found}") from None
        if hasattr(input_ids, "tolist"):  # a tensor or an array
            input_ids = input_ids.tolist()
        lines = input_ids if input_ids and isinstance(input_ids[0], (list, tuple)) else [input_ids]
        lines = [[int(token) for token in line if token not in self._dropped_ids] for line in lines]
        return [line for line in lines if line]

    def _packed_rows(self, documents: list) -> list:
        digest = hashlib.blake2b(repr(documents).encode(), digest_size=8).hexdigest()
        tokenizer = self.tokenizer
        packer = SequencePacker(self.max_length, tokenizer.cls_token_id, tokenizer.sep_token_id,
                                epoch_rng(self.seed, 0, f"collator:{digest}"))
        return list(pack_documents(documents, lambda lines: lines, packer))

    def _single_row(self, token_ids: list) -> PackedSequence:
        input_ids = [self.tokenizer.cls_token_id] + token_ids[:self.max_length - 2] + [self.tokenizer.sep_token_id]
        return PackedSequence(input_ids, [0] * len(input_ids))


class ElectraMetricsCallback(TrainerCallback):
    """Adds to each training log of ``Trainer`` the means, over the training forwards since the previous log,
    of ``mlm_loss``, ``rtd_loss``, ``generator_accuracy``, ``discriminator_accuracy`` and
    ``replaced_fraction`` (``Trainer(..., callbacks=[ElectraMetricsCallback()])``).

    The values are summed on the device and read once per log. They reach the progress bar, the printed logs
    and ``trainer.state.log_history``; the integrations of ``report_to`` (TensorBoard, W&B, ...) run before
    the callbacks a user passes, so to have them record the metrics too, put this one first:
    ``trainer.callback_handler.callbacks.insert(0, ElectraMetricsCallback())``.
    """

    METRICS = ("mlm_loss", "rtd_loss", "generator_accuracy", "discriminator_accuracy", "replaced_fraction")

    def __init__(self):
        self._sums: Optional[torch.Tensor] = None
        self._forwards = 0
        self._hook = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not isinstance(model, ElectraPretrainer):
            raise TypeError(f"ElectraMetricsCallback needs an ElectraPretrainer as the Trainer's model, got "
                            f"{type(model).__name__}")
        self._sums, self._forwards = None, 0
        self._hook = model.register_forward_hook(self._record)

    def _record(self, module, inputs, output):
        if not module.training or not isinstance(output, ElectraPretrainingOutput):
            return
        values = torch.stack([output[name].detach().float() for name in self.METRICS])
        self._sums = values if self._sums is None else self._sums + values
        self._forwards += 1

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs or not self._forwards:  # evaluation and end-of-training logs
            return
        means = dict(zip(self.METRICS, (self._sums / self._forwards).tolist()))
        logs.update(means)
        if state.log_history and state.log_history[-1].get("loss") == logs["loss"]:
            state.log_history[-1].update(means)  # the Trainer appended its copy of `logs` just before
        self._sums, self._forwards = None, 0

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
