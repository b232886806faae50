"""The training loop of ``electra-fast pretrain`` (DESIGN §1.8 optimiser and schedule).

One run: prepare data and tokenizer, build ``ElectraPretrainer(fused=True)`` from a preset, then for each
step accumulate ``grad_accum`` micro-batches (each with its own seed derived from ``(seed, step, micro)``),
clip the gradient norm to 1.0 and step AdamW and the linear schedule. Along the way:

* a tqdm bar shows loss, MLM, RTD, generator/discriminator accuracy, tokens/s and the ETA;
* ``metrics.jsonl`` gets one line per step (read back by ``--resume`` and by the final plot);
* every ``save_every`` steps, on Ctrl-C, SIGTERM or SIGUSR1 (after the step) and at the end,
  ``checkpoints/step-XXXXXXX.pt`` is written atomically (temporary file, then ``os.replace``; the last
  ``keep_checkpoints`` are kept) with the model, optimiser, scheduler, grad scaler, data position, RNG states
  and step, so ``--resume`` continues exactly;
* at the end: ``discriminator/`` (loadable by ``ElectraForSequenceClassification.from_pretrained``),
  ``generator/``, both with the tokenizer, ``loss.png`` and ``summary.txt``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
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
from .cpu.compiler import compile_enabled
from .data import PretrainingBatches, open_corpus
from .errors import UserInputError
from .optim import build_optimizer_and_scheduler
from .presets import get_preset
from .pretrainer import ElectraPretrainer
from .tokenizer import line_encoder, prepare_tokenizer, special_token_ids

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
LOGGED = ("loss", "mlm_loss", "rtd_loss", "generator_accuracy", "discriminator_accuracy", "replaced_fraction")
SIZE_FIELDS = ("hidden_size", "embedding_size", "num_layers", "num_heads", "generator_hidden_size")
OBJECTIVE_FIELDS = (
    "mask_prob", "max_predictions", "mask_token_prob", "random_token_prob", "mode", "temperature",
    "disallow_correct", "gen_weight", "disc_weight", "embedding_sharing",
)
# Settings a resumed run may change; every other setting must match the checkpoint.
RESUMABLE_CHANGES = {"steps", "save_every", "keep_checkpoints", "log_every", "resume", "overwrite", "device",
                     "max_time"}
# Exit code of a run stopped by --max-time after saving (GNU timeout's code for "time limit reached").
MAX_TIME_EXIT_CODE = 124


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
    # bookkeeping
    save_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 10
    resume: Optional[str] = None  # "latest" or a checkpoint file
    overwrite: bool = False
    max_time: Optional[str] = None  # wall-clock limit of this process's training loop, e.g. "3h30m"


@dataclass
class PretrainResult:
    output_dir: Path
    steps_done: int
    interrupted: bool
    summary: str
    exit_code: int = 0  # of an interrupted run: 128 + the stop signal's number, or 124 after --max-time


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
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise UserInputError(f"--output-dir {path} cannot be written: {error.strerror or error}") from None


def checkpoint_files(output_dir: Path) -> list:
    """Complete checkpoints, oldest first (temporary files of an interrupted save are ignored)."""
    return sorted((output_dir / CHECKPOINT_DIR).glob("step-*.pt"))


def save_checkpoint(output_dir: Path, state: dict, keep: int) -> Path:
    """Write ``state`` atomically to checkpoints/step-XXXXXXX.pt and keep only the newest ``keep``."""
    directory = output_dir / CHECKPOINT_DIR
    directory.mkdir(exist_ok=True)
    final = directory / f"step-{state['step']:07d}.pt"
    temporary = directory / f".{final.name}.tmp"
    torch.save(state, temporary)
    os.replace(temporary, final)
    for old in checkpoint_files(output_dir)[:-keep]:
        old.unlink()
    return final


def rng_states() -> dict:
    states = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if distributed.is_distributed() and torch.cuda.is_available():
        states["cuda_current_device"] = torch.cuda.get_rng_state()  # a process under torchrun has one GPU
    elif torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if "cuda_current_device" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda_current_device"])


def find_resume_checkpoint(config: PretrainConfig, output_dir: Path) -> Path:
    if config.resume != "latest":
        path = Path(config.resume).expanduser()
        if not path.is_file():
            raise UserInputError(f"--resume {config.resume}: no such checkpoint file")
        return path
    checkpoints = checkpoint_files(output_dir)
    if not checkpoints:
        raise UserInputError(f"--resume: no checkpoint in {output_dir / CHECKPOINT_DIR} to resume from")
    return checkpoints[-1]


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
                "save_every": config.save_every, "keep_checkpoints": config.keep_checkpoints,
                "log_every": config.log_every}
    for name, value in positive.items():
        if value < 1:
            raise UserInputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if config.lr is not None and not config.lr > 0:
        raise UserInputError(f"--lr must be > 0, got {config.lr}")
    if config.warmup_steps is not None and config.warmup_steps < 0:
        raise UserInputError(f"--warmup-steps must be >= 0, got {config.warmup_steps}")
    if config.max_time is not None:
        parse_duration(config.max_time)


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
    try:
        return train_this_process(config, after_step, log)
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
    resume_path = find_resume_checkpoint(config, output_dir) if config.resume is not None else None
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
    batches = PretrainingBatches(
        corpus, line_encoder(tokenizer), max_length=config.max_length, batch_size=config.batch_size,
        cls_id=tokenizer.cls_token_id, sep_id=tokenizer.sep_token_id, pad_id=tokenizer.pad_token_id,
        seed=config.seed, shuffle_buffer=config.shuffle_buffer,
    )

    step = 0
    if resume_path is not None:
        path = resume_path
        state = torch.load(path, map_location="cpu", weights_only=False)  # RNG states must stay on the CPU
        check_same_run(config, state["config"], path)
        if state.get("world_size", 1) != distributed.world_size():
            raise UserInputError(
                f"cannot resume from {path}: it was trained by {state.get('world_size', 1)} processes, now "
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
        log(f"resumed from {path} at step {step}")

    def checkpoint() -> Optional[Path]:
        """Rank 0 saves (with every process's RNG states under torchrun); the others wait for it."""
        rng = distributed.gather_objects(rng_states()) if distributed.is_distributed() else rng_states()
        path = None
        if main_process:
            state = {
                "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "data": batches.state_dict(),
                "rng": rng, "config": dataclasses.asdict(config), "world_size": distributed.world_size(),
            }
            path = save_checkpoint(output_dir, state, config.keep_checkpoints)
        distributed.barrier()
        return path

    model.train()
    if use_cpu_path(device) and not triton_can_run(device) and compile_enabled():
        log("the first steps compile the CPU path's fused loops (tens of seconds, the first time on a machine; "
            "later runs load them from torch.compile's cache)")
    pending: list = []  # (step, metrics tensor on device, tokens, lr) not yet written: one sync per flush
    last_flush = time.perf_counter()
    progress = tqdm(total=config.steps, initial=step, desc="pretrain", unit="step", dynamic_ncols=True,
                    disable=not main_process)

    def flush() -> None:
        nonlocal last_flush
        if not pending:
            return
        now = time.perf_counter()
        # under torchrun: the metrics averaged over the processes and the tokens of all of them
        values = distributed.mean_across_ranks(torch.stack([metrics for _, metrics, _, _ in pending])).tolist()
        step_tokens = torch.tensor([tokens for _, _, tokens, _ in pending], device=device)
        step_tokens = distributed.sum_across_ranks(step_tokens).tolist()
        tokens_per_second = sum(step_tokens) / max(now - last_flush, 1e-9)
        pending_rows = [(at_step, tokens, step_lr) for (at_step, _, _, step_lr), tokens in zip(pending, step_tokens)]
        pending.clear()
        last_flush = now
        if not main_process:
            return
        with open(metrics_path, "a") as handle:
            for (at_step, tokens, step_lr), row in zip(pending_rows, values):
                record = {"step": at_step, **dict(zip(LOGGED + ("grad_norm",), row)), "lr": step_lr,
                          "tokens": tokens, "tokens_per_second": tokens_per_second}
                handle.write(json.dumps(record) + "\n")
        last = dict(zip(LOGGED, values[-1]))
        progress.set_postfix(
            loss=f"{last['loss']:.3f}", mlm=f"{last['mlm_loss']:.3f}", rtd=f"{last['rtd_loss']:.3f}",
            gen_acc=f"{last['generator_accuracy']:.3f}", disc_acc=f"{last['discriminator_accuracy']:.3f}",
            tok_s=f"{tokens_per_second:,.0f}", refresh=False,
        )

    max_seconds = parse_duration(config.max_time) if config.max_time is not None else None
    loop_start = time.monotonic()

    def stop_requested(interrupt: InterruptFlag) -> bool:
        """A signal or --max-time on any process stops every process before the same step (one collective)."""
        if max_seconds is not None and not interrupt.requested and time.monotonic() - loop_start >= max_seconds:
            interrupt.requested = interrupt.timed_out = True
            log(f"--max-time {config.max_time} reached: stopping to save a checkpoint")
        return distributed.any_rank(interrupt.requested, device)

    with InterruptFlag() as interrupt:
        while step < config.steps and not stop_requested(interrupt):
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
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            pending.append((step, torch.cat([step_metrics / config.grad_accum, grad_norm.float()[None]]), tokens, step_lr))
            progress.update(1)
            if step % config.log_every == 0 or step == config.steps:
                flush()
            if step % config.save_every == 0 and step < config.steps:
                flush()
                checkpoint()
            if after_step is not None:
                after_step(step)
    progress.close()
    if step < config.steps:  # stopped by a signal or --max-time (on some rank)
        flush()
        log(f"interrupted at step {step}: saved {checkpoint()}; run the same command with --resume to continue")
        exit_code = MAX_TIME_EXIT_CODE if interrupt.timed_out else 128 + (interrupt.signal_number or signal.SIGINT)
        return PretrainResult(output_dir, step, True, "", exit_code)

    flush()
    checkpoint()
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
    summary = summarize(config, model, metrics, output_dir, device, autocast_dtype)
    (output_dir / "summary.txt").write_text(summary + "\n")
    distributed.barrier()
    return PretrainResult(output_dir, step, False, summary)


# --------------------------------------------------------------------------------------------- reporting


def window_mean(metrics: list, key: str, first: bool) -> float:
    """Mean of ``key`` over the first (or last) tenth of the steps, at least one step: a stable start/end."""
    width = max(1, len(metrics) // 10)
    rows = metrics[:width] if first else metrics[-width:]
    return sum(row[key] for row in rows) / len(rows)


def plot_losses(metrics: list, path: Path) -> None:
    """Loss, MLM and RTD curves (raw and smoothed) plus the two accuracies, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in metrics]
    panels = [("loss", "total loss"), ("mlm_loss", "generator MLM loss"), ("rtd_loss", "discriminator RTD loss"),
              ("accuracy", "accuracy")]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    smoothing = max(1, len(metrics) // 30)
    for axis, (key, title) in zip(axes, panels):
        keys = ["generator_accuracy", "discriminator_accuracy"] if key == "accuracy" else [key]
        for name in keys:
            values = [row[name] for row in metrics]
            smoothed = [sum(values[max(0, i - smoothing + 1): i + 1]) / len(values[max(0, i - smoothing + 1): i + 1])
                        for i in range(len(values))]
            line, = axis.plot(steps, smoothed, label=name.replace("_", " "))
            axis.plot(steps, values, color=line.get_color(), alpha=0.25, linewidth=0.8)
        axis.set_title(title)
        axis.set_xlabel("step")
        if key == "accuracy":
            axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def summarize(config, model, metrics, output_dir, device, autocast_dtype) -> str:
    generator_parameters = sum(p.numel() for p in model.generator.parameters())
    discriminator_parameters = sum(p.numel() for p in model.discriminator.parameters())
    tokens = sum(row["tokens"] for row in metrics)
    throughput = [row["tokens_per_second"] for row in metrics]
    precision = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[autocast_dtype]
    processes = distributed.world_size()
    placement = f"{processes} processes ({device.type}, DDP)" if processes > 1 else str(device)

    def change(key: str) -> str:
        return f"{window_mean(metrics, key, True):.3f} -> {window_mean(metrics, key, False):.3f}"

    return (
        f"Pre-trained ELECTRA-{config.preset} (discriminator {discriminator_parameters / 1e6:.2f} M parameters, "
        f"generator {generator_parameters / 1e6:.2f} M, embeddings shared) for {len(metrics)} steps of "
        f"{processes * config.batch_size * config.grad_accum} sequences x {config.max_length} tokens "
        f"({tokens / 1e6:.2f} M real tokens) on {placement} in {precision} at about "
        f"{sorted(throughput)[len(throughput) // 2]:,.0f} tokens/s. "
        f"Loss (mean of the first and last tenth of the steps) went {change('loss')}: generator MLM "
        f"{change('mlm_loss')}, discriminator RTD {change('rtd_loss')}; generator accuracy "
        f"{change('generator_accuracy')}, discriminator accuracy {change('discriminator_accuracy')}. "
        f"The discriminator (for fine-tuning) is in {output_dir / 'discriminator'}, the generator in "
        f"{output_dir / 'generator'}, metrics in {output_dir / METRICS_FILE}, curves in {output_dir / 'loss.png'}."
    )
