"""What defines a run of ``electra-fast pretrain``: its settings, their checks and what follows from them.

``PretrainConfig`` holds the flags; ``check_config`` rejects bad values before any work; the resolvers turn
"auto" and the other defaults into a device, an autocast dtype, a checkpoint interval; ``step_seed`` names
the random draws of every micro-batch (docs/design.md §4).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import torch

from .data import MIN_SHORT_LENGTH, PACKINGS
from .errors import UserInputError
from .objective import ElectraObjective, bound_holds, field_named, flag_fields
from .stopping import parse_duration

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SIZE_FIELDS = ("hidden_size", "embedding_size", "num_layers", "num_heads", "generator_hidden_size")
OBJECTIVE_FIELDS = tuple(field.name for field in flag_fields())  # ElectraObjective's, each with its flag
# Settings a resumed run may change; every other setting is the checkpoint's, and passing another value is an error.
RESUMABLE_CHANGES = {"steps", "save_every", "keep_checkpoints", "log_every", "device", "max_time", "eval_every",
                     "eval_sequences", "max_bad_steps", "data_workers", "prepare_workers", "compile"}
# What this invocation is asked to do and where, never taken from a checkpoint (a run folder may have moved).
INVOCATION_SETTINGS = {"output_dir", "resume", "overwrite"}
PATH_SETTINGS = ("data", "tokenizer")


# One optional setting per objective flag; None: not passed, the ElectraObjective (or preset) default.
ObjectiveSettings = dataclasses.make_dataclass(
    "ObjectiveSettings", [(name, Optional[object], None) for name in OBJECTIVE_FIELDS])


@dataclass
class PretrainConfig(ObjectiveSettings):
    """Everything that defines a run (the flags of ``electra-fast pretrain``); the objective's settings are
    ``ObjectiveSettings``' fields, derived from ``ElectraObjective``."""

    output_dir: str = "runs/electra"
    # data and tokenizer
    data: Optional[str] = None
    text_field: str = "text"
    tokenizer: Optional[str] = None
    vocab_size: Optional[int] = None  # trained tokenizer only; default 4000 for "tiny", else 30522
    max_length: int = 128
    packing: str = "full"  # "documents": the official one-document-per-sequence packing
    prepare_workers: Optional[int] = None  # processes that tokenize and pack; default: the cores, at most 8
    data_workers: int = 0  # DataLoader workers; 0: batches are built in the training process (benchmarks/bench_data.py)
    # model
    preset: str = "tiny"
    hidden_size: Optional[int] = None
    embedding_size: Optional[int] = None
    num_layers: Optional[int] = None
    num_heads: Optional[int] = None
    generator_hidden_size: Optional[int] = None
    # optimisation
    steps: int = 300
    batch_size: int = 32
    grad_accum: int = 1
    lr: Optional[float] = None  # default: the preset's
    warmup_steps: Optional[int] = None  # default: 10 % of the steps, at most 10 000
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    compile: bool = False  # torch.compile the pre-trainer
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    # evaluation on held-out documents
    eval_fraction: float = 0.05
    eval_every: int = 100
    eval_sequences: int = 256
    # bookkeeping
    save_every: Optional[int] = None  # default: a fifth of the steps, at most 1000
    keep_checkpoints: int = 3
    log_every: int = 10
    resume: Optional[str] = None  # "latest" or a checkpoint file
    overwrite: bool = False
    max_time: Optional[str] = None  # wall-clock limit of this process's training loop, e.g. "3h30m"
    max_bad_steps: int = 5  # consecutive steps with a non-finite loss or gradient that stop the run


def step_seed(seed: int, step: int, micro: int, grad_accum: int, rank: int = 0, world_size: int = 1) -> int:
    """The seed of one micro-batch: a SplitMix64 hash of (seed, its index), kept in [0, 2**31). Under torchrun
    the index counts the micro-batches of all processes, so each process masks and samples differently."""
    index = (step * grad_accum + micro) * world_size + rank
    x = (seed * 0x9E3779B97F4A7C15 + index + 1) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 31)) & 0x7FFFFFFF


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserInputError(f"--device must be auto, cpu or cuda[:N], got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError("--device cuda was requested but no CUDA device is available")
    if device.type not in ("cpu", "cuda"):
        raise UserInputError(f"--device must be auto, cpu or cuda[:N], got {name!r}")
    return device


def resolve_precision(name: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype (None = fp32). bf16/fp16 autocast is for GPUs only."""
    if name not in PRECISIONS:
        raise UserInputError(f"--precision must be one of {PRECISIONS}, got {name!r}")
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if name == "fp32":
        return None
    if device.type != "cuda":
        raise UserInputError(f"--precision {name} needs a CUDA device; use fp32 on {device.type}")
    return torch.bfloat16 if name == "bf16" else torch.float16


def check_config(config: PretrainConfig) -> None:
    positive = {"steps": config.steps, "batch_size": config.batch_size, "grad_accum": config.grad_accum,
                "keep_checkpoints": config.keep_checkpoints, "log_every": config.log_every,
                "eval_every": config.eval_every, "eval_sequences": config.eval_sequences,
                "max_bad_steps": config.max_bad_steps}
    if config.save_every is not None:
        positive["save_every"] = config.save_every
    for name, value in positive.items():
        if value < 1:
            raise UserInputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    for name in SIZE_FIELDS:
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise UserInputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if config.max_length < MIN_SHORT_LENGTH:
        raise UserInputError(f"--max-length must be at least {MIN_SHORT_LENGTH}, got {config.max_length}")
    check_objective(config)
    if config.lr is not None and not config.lr > 0:
        raise UserInputError(f"--lr must be > 0, got {config.lr}")
    if config.warmup_steps is not None and config.warmup_steps < 0:
        raise UserInputError(f"--warmup-steps must be >= 0, got {config.warmup_steps}")
    if config.packing not in PACKINGS:
        raise UserInputError(f"--packing must be one of {', '.join(PACKINGS)}, got {config.packing!r}")
    for name in ("prepare_workers", "data_workers"):
        if getattr(config, name) is not None and getattr(config, name) < 0:
            raise UserInputError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(config, name)}")
    if not 0 <= config.eval_fraction < 1:
        raise UserInputError(f"--eval-fraction must be in [0, 1) (0: no evaluation), got {config.eval_fraction}")
    if config.max_time is not None:
        parse_duration(config.max_time)


def check_objective(config: PretrainConfig) -> None:
    """The objective's values, checked as the pre-trainer and the masking would check them, but before any work."""
    for name in OBJECTIVE_FIELDS:
        value, wanted = getattr(config, name), field_named(name).metadata["wanted"]
        if value is not None and wanted and not (math.isfinite(value) and bound_holds(name, value)):
            raise UserInputError(f"--{name.replace('_', '-')} must be {wanted}, got {value}")
    mask_token_prob, random_token_prob = (
        getattr(ElectraObjective, name) if getattr(config, name) is None else getattr(config, name)
        for name in ("mask_token_prob", "random_token_prob"))
    if mask_token_prob + random_token_prob > 1 + 1e-9:
        raise UserInputError(f"--mask-token-prob + --random-token-prob must be at most 1 (the rest of the chosen "
                             f"tokens stay as they are), got {mask_token_prob} + {random_token_prob}")


def save_interval(config: PretrainConfig) -> int:
    """--save-every, by default a fifth of the steps (at most 1000), so that even a short run saves."""
    return config.save_every if config.save_every is not None else max(1, min(1000, config.steps // 5))
