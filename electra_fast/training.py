"""The training loop of ``electra-fast pretrain`` (DESIGN §1.8 optimiser and schedule).

One run: prepare data and tokenizer, build ``ElectraPretrainer(fused=True)`` from a preset, then for each
step accumulate ``grad_accum`` micro-batches (each with its own seed derived from ``(seed, step, micro)``),
clip the gradient norm to 1.0 and step AdamW and the linear schedule. Along the way:

* a tqdm bar shows loss, MLM, RTD, generator/discriminator accuracy, tokens/s and the ETA;
* ``metrics.jsonl`` gets one line per step (read back by ``--resume`` and by the final plot);
* ``eval_fraction`` of the documents are held out; at step 0, every ``eval_every`` steps and at the end the
  models are measured on them (electra_fast/evaluation.py);
* a step whose loss or gradient is not finite is skipped (no update) and logged; ``max_bad_steps`` of them in
  a row stop the run, keeping the checkpoints it has;
* every ``save_every`` steps, on Ctrl-C, SIGTERM or SIGUSR1 (after the step), after ``--max-time`` and at the
  end, a checkpoint is written (electra_fast/checkpoints.py), so ``--resume`` continues exactly;
* at the end: ``discriminator/`` (loadable by ``ElectraForSequenceClassification.from_pretrained``),
  ``generator/``, both with the tokenizer, ``loss.png`` and ``summary.txt`` (electra_fast/run_report.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from . import distributed
from .backend import requested_backend, triton_can_run, use_cpu_path
from .checkpoints import (
    checkpoint_files,
    newest_checkpoint,
    restore_rng_states,
    resume_state,
    rng_states,
    save_checkpoint,
)
from .cpu.compiler import compile_enabled
from .data import PretrainingBatches, open_corpus
from .errors import UserInputError
from .evaluation import SplitCorpus, evaluate, evaluation_batches
from .optim import build_optimizer_and_scheduler
from .presets import get_preset
from .pretrainer import ElectraPretrainer
from .run_report import plot_losses, summarize
from .tokenizer import line_encoder, prepare_tokenizer, special_token_ids

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
METRICS_FILE = "metrics.jsonl"
LOGGED = ("loss", "mlm_loss", "rtd_loss", "generator_accuracy", "discriminator_accuracy", "replaced_fraction")
SIZE_FIELDS = ("hidden_size", "embedding_size", "num_layers", "num_heads", "generator_hidden_size")
OBJECTIVE_FIELDS = (
    "mask_prob", "max_predictions", "mask_token_prob", "random_token_prob", "mode", "temperature",
    "disallow_correct", "gen_weight", "disc_weight", "embedding_sharing",
)
# Settings a resumed run may change; every other setting must match the checkpoint.
RESUMABLE_CHANGES = {"steps", "save_every", "keep_checkpoints", "log_every", "resume", "overwrite", "device",
                     "max_time", "eval_every", "eval_sequences", "max_bad_steps"}
# Exit code of a run stopped by --max-time after saving (GNU timeout's code for "time limit reached").
MAX_TIME_EXIT_CODE = 124
# Exit code of a run stopped by --max-bad-steps consecutive non-finite steps (nothing saved after them).
DIVERGED_EXIT_CODE = 3


@dataclass
class PretrainConfig:
    """Everything that defines a run (the flags of ``electra-fast pretrain``)."""

    output_dir: str = "runs/electra"
    # data and tokenizer
    data: Optional[str] = None
    text_field: str = "text"
    tokenizer: Optional[str] = None
    vocab_size: Optional[int] = None  # trained tokenizer only; default 4000 for "tiny", else 30522
    max_length: int = 128
    shuffle_buffer: int = 10_000
    # model
    preset: str = "tiny"
    hidden_size: Optional[int] = None
    embedding_size: Optional[int] = None
    num_layers: Optional[int] = None
    num_heads: Optional[int] = None
    generator_hidden_size: Optional[int] = None
    # objective (None: the ElectraObjective / preset default)
    mask_prob: Optional[float] = None
    max_predictions: Optional[int] = None
    mask_token_prob: Optional[float] = None
    random_token_prob: Optional[float] = None
    mode: Optional[str] = None
    temperature: Optional[float] = None
    disallow_correct: Optional[bool] = None
    gen_weight: Optional[float] = None
    disc_weight: Optional[float] = None
    embedding_sharing: Optional[str] = None
    # optimisation
    steps: int = 300
    batch_size: int = 32
    grad_accum: int = 1
    lr: Optional[float] = None  # default: the preset's
    warmup_steps: Optional[int] = None  # default: 10 % of the steps, at most 10 000
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
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


@dataclass
class PretrainResult:
    output_dir: Path
    steps_done: int
    interrupted: bool
    summary: str
    exit_code: int = 0  # of an interrupted run: 128 + the stop signal's number, 124 after --max-time, 3 diverged


# ------------------------------------------------------------------------------------------------ helpers


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


def prepare_output_dir(path: Path) -> None:
    """Create the output directory and prove it is writable before any work is done."""
    if path.exists() and not path.is_dir():
        raise UserInputError(f"--output-dir {path} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise UserInputError(f"--output-dir {path} cannot be written: {error.strerror or error}") from None


def first_missing_directory(path: Path) -> Optional[Path]:
    """The outermost directory of ``path`` that does not exist yet (None if ``path`` exists)."""
    missing = None
    for candidate in [path, *path.parents]:
        if candidate.exists():
            break
        missing = candidate
    return missing


def remove_empty_directories(path: Path, top: Path) -> None:
    """Remove ``path``'s empty subdirectories, then ``path`` and its parents up to ``top`` while empty: what a
    failed run created and left unused."""
    if not path.is_dir():
        return
    for directory, _, _ in sorted(os.walk(path), key=lambda entry: -len(entry[0])):
        try:
            os.rmdir(directory)
        except OSError:
            pass  # not empty
    for directory in [path, *path.parents]:
        try:
            os.rmdir(directory)
        except OSError:
            return
        if directory == top:
            return


def check_same_run(config: PretrainConfig, saved: dict, path: Path) -> None:
    current = dataclasses.asdict(config)
    differences = [
        f"--{key.replace('_', '-')} {saved.get(key)!r} -> {current[key]!r}"
        for key in current
        if key not in RESUMABLE_CHANGES and saved.get(key) != current[key]
    ]
    if differences:
        raise UserInputError(
            f"cannot resume from {path}: these settings differ from the checkpoint's: " + "; ".join(differences)
        )


def keep_metrics_up_to(metrics_path: Path, step: int) -> None:
    """Drop metric lines of steps after ``step`` (logged after the checkpoint a run resumes from)."""
    if not metrics_path.exists():
        return
    lines = [line for line in metrics_path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    temporary = metrics_path.with_suffix(".tmp")
    temporary.write_text("".join(line + "\n" for line in lines))
    os.replace(temporary, metrics_path)


def read_metrics(metrics_path: Path) -> list:
    if not metrics_path.exists():
        return []
    return [json.loads(line) for line in metrics_path.read_text().splitlines() if line]


# Signals that stop a run after the current step, with a checkpoint: Ctrl-C, the scheduler's SIGTERM (SLURM,
# Kubernetes) and SLURM's warning signal (--signal=USR1@...). The process then exits with 128 + the number.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name))


class InterruptFlag:
    """Turns the first stop signal into a request to stop after the current step (and save); a second Ctrl-C
    interrupts at once (a repeated SIGTERM or SIGUSR1 does not: the save must finish)."""

    def __init__(self):
        self.requested = False
        self.timed_out = False  # set by the loop when --max-time is reached
        self.signal_number: Optional[int] = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.requested = True
        self.signal_number = signum
        how = "Ctrl-C again to quit without saving" if signum == signal.SIGINT else "then exit"
        sys.stderr.write(f"\n{signal.Signals(signum).name}: stopping after this step to save a checkpoint ({how})\n")

    def __exit__(self, *exc):
        for number, previous in self._previous.items():
            signal.signal(number, previous)


# ------------------------------------------------------------------------------------------- the run


def build_pretrainer(config: PretrainConfig, tokenizer) -> ElectraPretrainer:
    sizes = {name: getattr(config, name) for name in SIZE_FIELDS if getattr(config, name) is not None}
    objective = {name: getattr(config, name) for name in OBJECTIVE_FIELDS if getattr(config, name) is not None}
    try:
        preset = get_preset(config.preset, **sizes)
    except ValueError as error:
        raise UserInputError(str(error)) from None
    if config.max_length > preset.max_position_embeddings:
        raise UserInputError(
            f"--max-length {config.max_length} is above the {preset.max_position_embeddings} position "
            f"embeddings of preset {config.preset!r}"
        )
    try:
        return ElectraPretrainer.from_preset(
            config.preset,
            vocab_size=len(tokenizer),
            mask_token_id=tokenizer.mask_token_id,
            special_token_ids=special_token_ids(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            fused=True,
            **sizes,
            **objective,
        )
    except ValueError as error:
        raise UserInputError(str(error)) from None


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
    if config.lr is not None and not config.lr > 0:
        raise UserInputError(f"--lr must be > 0, got {config.lr}")
    if config.warmup_steps is not None and config.warmup_steps < 0:
        raise UserInputError(f"--warmup-steps must be >= 0, got {config.warmup_steps}")
    if not 0 <= config.eval_fraction < 1:
        raise UserInputError(f"--eval-fraction must be in [0, 1) (0: no evaluation), got {config.eval_fraction}")
    if config.max_time is not None:
        parse_duration(config.max_time)


def save_interval(config: PretrainConfig) -> int:
    """--save-every, by default a fifth of the steps (at most 1000), so that even a short run saves."""
    return config.save_every if config.save_every is not None else max(1, min(1000, config.steps // 5))


def parse_duration(text: str) -> float:
    """Seconds in "3h30m", "45m", "90s", "1h", "1.5h" or a plain number of seconds; an error names --max-time."""
    match = re.fullmatch(r"\s*(?:(\d+(?:\.\d*)?)h)?\s*(?:(\d+(?:\.\d*)?)m)?\s*(?:(\d+(?:\.\d*)?)s?)?\s*", text)
    if not text.strip() or match is None or not any(match.groups()):
        raise UserInputError(f"--max-time must be a duration such as 3h30m, 45m, 90s or 600, got {text!r}")
    hours, minutes, seconds = (float(group) if group else 0.0 for group in match.groups())
    total = 3600 * hours + 60 * minutes + seconds
    if total <= 0:
        raise UserInputError(f"--max-time must be longer than 0, got {text!r}")
    return total


def pretrain(
    config: PretrainConfig,
    *,
    after_step: Optional[Callable[[int], None]] = None,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> PretrainResult:
    """Run (or resume) one pre-training run; ``after_step(step)`` is called after every optimiser step.

    Under ``torchrun`` (``WORLD_SIZE > 1``) each process trains a DistributedDataParallel replica on its own
    share of the batches; rank 0 alone writes files and messages (see electra_fast/distributed.py)."""
    output_dir = Path(config.output_dir).expanduser()
    created = first_missing_directory(output_dir)
    try:
        return train_this_process(config, after_step, log)
    except BaseException:
        if created is not None and distributed.is_main_process():
            remove_empty_directories(output_dir, created)  # a failed run leaves no empty folders behind
        raise
    finally:
        distributed.teardown()




def train_this_process(config: PretrainConfig, after_step, log) -> PretrainResult:
    from tqdm.auto import tqdm

    check_config(config)
    output_dir = Path(config.output_dir).expanduser()
    device = distributed.local_device(resolve_device(config.device))
    # User errors first, before any work (training a tokenizer takes a while).
    if requested_backend() == "triton" and not triton_can_run(device):
        raise UserInputError(
            f"--backend triton cannot run on {device}: the Triton kernels need a CUDA device (or TRITON_INTERPRET=1 "
            "for the slow interpreter on the CPU); use --backend auto"
        )
    if output_dir.exists() and not output_dir.is_dir():
        raise UserInputError(f"--output-dir {output_dir} is a file, not a directory")
    resume_path, state = resume_state(config.resume, output_dir, log) if config.resume is not None else (None, None)
    if state is not None:
        check_same_run(config, state["config"], resume_path)
    distributed.setup(device)
    main_process = distributed.is_main_process()
    if main_process:
        prepare_output_dir(output_dir)
    else:
        log = lambda message: None  # noqa: E731 (rank 0 reports for all)
    autocast_dtype = resolve_precision(config.precision, device)
    metrics_path = output_dir / METRICS_FILE
    if config.resume is None and checkpoint_files(output_dir) and not config.overwrite:
        raise UserInputError(
            f"{output_dir} already holds a run; pass --resume to continue it or --overwrite to start over"
        )
    if config.resume is None and main_process:
        for stale in checkpoint_files(output_dir) + [metrics_path]:
            stale.unlink(missing_ok=True)

    corpus = open_corpus(config.data, config.text_field)
    vocab_size = config.vocab_size or (4000 if config.preset == "tiny" else 30522)
    if not main_process:
        distributed.barrier()  # rank 0 first trains and caches the tokenizer; the others then load it
    tokenizer = prepare_tokenizer(config.tokenizer, corpus, vocab_size, output_dir / "tokenizer", log=log)
    if main_process:
        distributed.barrier()

    torch.manual_seed(config.seed)
    model = build_pretrainer(config, tokenizer).to(device)
    training_model = distributed.wrap(model, device)  # DDP copies rank 0's weights to every process
    distributed.seed_this_rank(config.seed)
    lr = config.lr if config.lr is not None else get_preset(config.preset).learning_rate
    warmup = config.warmup_steps if config.warmup_steps is not None else min(10_000, config.steps // 10)
    optimizer, scheduler = build_optimizer_and_scheduler(
        model, lr=lr, warmup_steps=warmup, total_steps=config.steps, weight_decay=config.weight_decay
    )
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype == torch.float16)
    packing = dict(max_length=config.max_length, cls_id=tokenizer.cls_token_id, sep_id=tokenizer.sep_token_id,
                   pad_id=tokenizer.pad_token_id, seed=config.seed)
    evaluating = config.eval_fraction > 0
    training_corpus = SplitCorpus(corpus, config.eval_fraction, held_out=False) if evaluating else corpus
    batches = PretrainingBatches(training_corpus, line_encoder(tokenizer), batch_size=config.batch_size,
                                 shuffle_buffer=config.shuffle_buffer, **packing)
    held_out_batches = []
    if evaluating and main_process:
        held_out_batches = evaluation_batches(corpus, line_encoder(tokenizer), fraction=config.eval_fraction,
                                              sequences=config.eval_sequences, batch_size=config.batch_size,
                                              **packing)
        if not held_out_batches:
            log(f"--eval-fraction {config.eval_fraction} holds out no document of this small corpus: no evaluation")
    eval_sequences = sum(len(batch["input_ids"]) for batch in held_out_batches)

    step = 0
    if state is not None:
        if state.get("world_size", 1) != distributed.world_size():
            raise UserInputError(
                f"cannot resume from {resume_path}: it was trained by {state.get('world_size', 1)} processes, now "
                f"{distributed.world_size()} (the data split and the RNG states depend on it)"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        batches.load_state_dict(state["data"])
        restore_rng_states(state["rng"][distributed.rank()] if distributed.is_distributed() else state["rng"])
        step = state["step"]
        if state["config"]["steps"] != config.steps:
            log(f"--steps changed from {state['config']['steps']} to {config.steps}: the learning-rate schedule "
                "now decays to 0 at the new last step, so the run is no longer the one it would have been")
        if main_process:
            keep_metrics_up_to(metrics_path, step)
        log(f"resumed from {resume_path} at step {step}")
        del state

    def checkpoint() -> Optional[Path]:
        """Rank 0 saves (with every process's RNG states under torchrun); the others wait for it."""
        rng = distributed.gather_objects(rng_states()) if distributed.is_distributed() else rng_states()
        path = None
        if main_process:
            saved = {
                "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "data": batches.state_dict(),
                "rng": rng, "config": dataclasses.asdict(config), "world_size": distributed.world_size(),
            }
            path = save_checkpoint(output_dir, saved, config.keep_checkpoints)
        distributed.barrier()
        return path

    def append_metrics(records: list) -> None:
        with open(metrics_path, "a") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")

    def evaluate_now() -> None:
        """Rank 0 measures the held-out split and logs it as an ``eval_*`` row; the others wait."""
        if held_out_batches:
            results = evaluate(model, held_out_batches, device, autocast_dtype, config.seed)
            append_metrics([{"step": step, **results, "eval_sequences": eval_sequences}])

            def shown(value):
                return "n/a" if value is None else f"{value:.3f}"

            tqdm.write(f"held-out at step {step}: discriminator ROC AUC {shown(results['eval_rtd_auc'])} "
                       f"(random replacements {shown(results['eval_random_auc'])}), generator MLM accuracy "
                       f"{shown(results['eval_mlm_accuracy'])}", file=sys.stderr)
        distributed.barrier()

    model.train()
    if use_cpu_path(device) and not triton_can_run(device) and compile_enabled():
        log("the first steps compile the CPU path's fused loops (tens of seconds, the first time on a machine; "
            "later runs load them from torch.compile's cache)")
    if evaluating and step == 0:
        evaluate_now()  # the untrained baseline
    pending: list = []  # (step, metrics tensor on device, tokens, lr, skipped) not yet written: one sync per flush
    last_flush = time.perf_counter()
    progress = tqdm(total=config.steps, initial=step, desc="pretrain", unit="step", dynamic_ncols=True,
                    disable=not main_process)

    def flush() -> None:
        nonlocal last_flush
        if not pending:
            return
        now = time.perf_counter()
        # under torchrun: the metrics averaged over the processes and the tokens of all of them
        values = distributed.mean_across_ranks(torch.stack([row[1] for row in pending])).tolist()
        step_tokens = distributed.sum_across_ranks(torch.tensor([row[2] for row in pending], device=device)).tolist()
        tokens_per_second = sum(step_tokens) / max(now - last_flush, 1e-9)
        rows = [(at_step, tokens, step_lr, skipped) for (at_step, _, _, step_lr, skipped), tokens
                in zip(pending, step_tokens)]
        pending.clear()
        last_flush = now
        if not main_process:
            return
        append_metrics([
            {"step": at_step, **dict(zip(LOGGED + ("grad_norm",), row)), "lr": step_lr, "tokens": tokens,
             "tokens_per_second": tokens_per_second, "skipped": skipped}
            for (at_step, tokens, step_lr, skipped), row in zip(rows, values)
        ])
        last = dict(zip(LOGGED, values[-1]))
        progress.set_postfix(
            loss=f"{last['loss']:.3f}", mlm=f"{last['mlm_loss']:.3f}", rtd=f"{last['rtd_loss']:.3f}",
            gen_acc=f"{last['generator_accuracy']:.3f}", disc_acc=f"{last['discriminator_accuracy']:.3f}",
            tok_s=f"{tokens_per_second:,.0f}", refresh=False,
        )

    max_seconds = parse_duration(config.max_time) if config.max_time is not None else None
    loop_start = time.monotonic()
    save_every = save_interval(config)
    bad_in_a_row = 0

    def stop_requested(interrupt: InterruptFlag) -> bool:
        """A signal or --max-time on any process stops every process before the same step (one collective)."""
        if max_seconds is not None and not interrupt.requested and time.monotonic() - loop_start >= max_seconds:
            interrupt.requested = interrupt.timed_out = True
            log(f"--max-time {config.max_time} reached: stopping to save a checkpoint")
        return distributed.any_rank(interrupt.requested, device)

    with InterruptFlag() as interrupt:
        while step < config.steps and bad_in_a_row < config.max_bad_steps and not stop_requested(interrupt):
            step_metrics = torch.zeros(len(LOGGED), device=device)
            tokens = 0
            for micro in range(config.grad_accum):
                batch = distributed.next_batch_of_this_rank(batches)
                tokens += int(batch["attention_mask"].sum())
                input_ids = batch["input_ids"].to(device, non_blocking=True)
                attention_mask = batch["attention_mask"].to(device, non_blocking=True)
                token_type_ids = batch["token_type_ids"].to(device, non_blocking=True)
                seed = step_seed(config.seed, step, micro, config.grad_accum,
                                 distributed.rank(), distributed.world_size())
                with distributed.gradient_sync(training_model, micro == config.grad_accum - 1):
                    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                        enabled=autocast_dtype is not None):
                        out = training_model(input_ids, attention_mask, token_type_ids=token_type_ids, seed=seed)
                    scaler.scale(out.loss / config.grad_accum).backward()
                step_metrics += torch.stack([getattr(out, name).detach().float() for name in LOGGED])
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            step_lr = scheduler.get_last_lr()[0]
            # A non-finite loss (or, without fp16's grad scaler, which skips those itself, a non-finite gradient)
            # skips the update. Deciding it costs one device synchronisation per step.
            finite = torch.isfinite(step_metrics[0])
            if not scaler.is_enabled():
                finite = finite & torch.isfinite(grad_norm)
            skipped = distributed.any_rank(not bool(finite), device)
            if skipped:
                bad_in_a_row += 1
            else:
                bad_in_a_row = 0
                scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            pending.append((step, torch.cat([step_metrics / config.grad_accum, grad_norm.float()[None]]), tokens,
                            step_lr, skipped))
            progress.update(1)
            if skipped:
                tqdm.write(f"step {step}: the loss or gradient is not finite; the step was skipped "
                           f"({bad_in_a_row} in a row, the run stops at {config.max_bad_steps})", file=sys.stderr)
            if step % config.log_every == 0 or step == config.steps or skipped:
                flush()
            if evaluating and step % config.eval_every == 0 and step < config.steps:
                flush()
                evaluate_now()
            if step % save_every == 0 and step < config.steps and not skipped:
                flush()
                checkpoint()
            if after_step is not None:
                after_step(step)
    progress.close()
    flush()
    if bad_in_a_row >= config.max_bad_steps:
        newest = newest_checkpoint(output_dir)
        kept = f"the last good checkpoint is {newest}" if newest else "no checkpoint was saved before"
        log(f"stopped at step {step}: {bad_in_a_row} steps in a row had a non-finite loss or gradient; {kept} "
            "(lower --lr, raise --warmup-steps or check the data, then --resume from it)")
        return PretrainResult(output_dir, step, True, "", DIVERGED_EXIT_CODE)
    if step < config.steps:  # stopped by a signal or --max-time (on some rank)
        log(f"interrupted at step {step}: saved {checkpoint()}; run the same command with --resume to continue")
        exit_code = MAX_TIME_EXIT_CODE if interrupt.timed_out else 128 + (interrupt.signal_number or signal.SIGINT)
        return PretrainResult(output_dir, step, True, "", exit_code)

    checkpoint()
    if evaluating:
        evaluate_now()  # the final model
    if not main_process:
        distributed.barrier()  # until rank 0 has saved the models
        return PretrainResult(output_dir, step, False, "")
    model.save_pretrained(str(output_dir))
    # Saved with the models' length limit, so that truncation=True gives inputs the saved models accept.
    tokenizer.model_max_length = model.discriminator.config.max_position_embeddings
    for part in ("discriminator", "generator"):
        tokenizer.save_pretrained(str(output_dir / part))
    metrics = read_metrics(metrics_path)
    plot_losses(metrics, output_dir / "loss.png")
    precision = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[autocast_dtype]
    processes = distributed.world_size()
    summary = summarize(
        preset=config.preset, sequences_per_step=processes * config.batch_size * config.grad_accum,
        max_length=config.max_length, generator_parameters=sum(p.numel() for p in model.generator.parameters()),
        discriminator_parameters=sum(p.numel() for p in model.discriminator.parameters()), metrics=metrics,
        placement=f"{processes} processes ({device.type}, DDP)" if processes > 1 else str(device),
        precision=precision, output_dir=output_dir, metrics_file=METRICS_FILE, eval_sequences=eval_sequences,
    )
    (output_dir / "summary.txt").write_text(summary + "\n")
    distributed.barrier()
    return PretrainResult(output_dir, step, False, summary)
