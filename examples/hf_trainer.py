"""Pre-train a tiny ELECTRA with Hugging Face ``Trainer`` on electra-fast's embedded corpus (no download).

    pip install -e ".[hf]"
    python examples/hf_trainer.py --output-dir runs/hf-tiny --steps 300

A WordPiece tokenizer is trained on the corpus; each document becomes a ``datasets`` row of tokenized lines;
``DataCollatorForElectra`` packs rows into ``[CLS] A [SEP] B [SEP]`` sequences as ``electra-fast pretrain``
does, and ``ElectraPretrainer`` masks, samples and computes the loss on the device. ``Trainer`` logs the MLM
and RTD losses and accuracies (``ElectraMetricsCallback``), writes ``OUTPUT/checkpoint-N`` (``--resume
OUTPUT/checkpoint-N`` continues exactly) and, at the end, ``OUTPUT/discriminator`` and ``OUTPUT/generator``
as Hugging Face checkpoints with the tokenizer.
"""

from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments, set_seed

import electra_fast as ef
from electra_fast.data import EmbeddedCorpus, epoch_rng
from electra_fast.presets import get_preset
from electra_fast.tokenizer import train_wordpiece


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16, help="documents per batch (packed into rows)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=4000)
    parser.add_argument("--documents", type=int, default=None, help="train on the first N documents only")
    parser.add_argument("--save-steps", type=int, default=100)
    parser.add_argument("--resume", default=None, help="a checkpoint-N folder of an earlier run")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (a GPU that has it)")
    return parser.parse_args(argv)


def documents(limit: Optional[int]) -> list:
    """The embedded corpus's documents (lists of lines) in a fixed order (``corpus_text``'s), the first ``limit``."""
    return list(EmbeddedCorpus().documents(epoch_rng(0, 0, "documents")))[:limit]


def main(argv: Optional[Sequence[str]] = None) -> Trainer:
    args = parse_args(argv)
    corpus = documents(args.documents)
    tokenizer = train_wordpiece((line for document in corpus for line in document), args.vocab_size)

    def tokenize(batch: dict) -> dict:  # one row per document: its lines' token ids, no special tokens
        return {"input_ids": [tokenizer(lines, add_special_tokens=False)["input_ids"] for lines in batch["lines"]]}

    dataset = Dataset.from_dict({"lines": corpus}).map(tokenize, batched=True, remove_columns=["lines"])

    set_seed(0)  # the initial weights; Trainer seeds the rest (data order, dropout) from TrainingArguments.seed
    model = ef.ElectraPretrainer.from_preset(
        "tiny", vocab_size=len(tokenizer), mask_token_id=tokenizer.mask_token_id,
        special_token_ids=tokenizer.all_special_ids, pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=max(args.max_length, 256))
    training_args = TrainingArguments(
        output_dir=args.output_dir, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=get_preset("tiny").learning_rate, warmup_steps=max(1, args.steps // 10), weight_decay=0.01,
        adam_epsilon=1e-6, max_grad_norm=1.0, logging_steps=1 if args.steps <= 50 else 10,
        save_steps=args.save_steps, bf16=args.bf16, dataloader_pin_memory=torch.cuda.is_available(),
        report_to="none", seed=0, disable_tqdm=True,
    )
    trainer = Trainer(
        model=model, args=training_args, train_dataset=dataset,
        data_collator=ef.DataCollatorForElectra(tokenizer, max_length=args.max_length),
        callbacks=[ef.ElectraMetricsCallback()],
    )
    trainer.train(resume_from_checkpoint=args.resume)
    trainer.save_model(args.output_dir)  # OUTPUT/discriminator, OUTPUT/generator, the whole pre-trainer
    for part in ("discriminator", "generator"):
        tokenizer.save_pretrained(os.path.join(args.output_dir, part))
    return trainer


if __name__ == "__main__":
    main()
