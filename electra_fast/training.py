"""The training loop of ``electra-fast pretrain`` (docs/design.md §1.8 optimiser and schedule).

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

import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from . import distributed
from .backend import requested_backend, triton_can_run, use_cpu_path
from .checkpoints import (
    checkpoint_files,
    keep_metrics_up_to,
    newest_checkpoint,
    read_metrics,
    restore_rng_states,
    resume_state,
    resumed_config,
    rng_states,
    save_checkpoint,
)
from .cpu.compiler import compile_enabled
from .data import open_corpus
from .errors import UserInputError
from .evaluation import evaluate
from .loader import TrainingBatches, held_out_batches
from .optim import build_optimizer_and_scheduler
from .prepare_data import default_workers, prepared_cache, tokenizer_hash
from .presets import generator_heads, get_preset
from .pretrainer import ElectraPretrainer
from .run_config import (
    OBJECTIVE_FIELDS,
    PATH_SETTINGS,
    SIZE_FIELDS,
    PretrainConfig,
    check_config,
    resolve_device,
    resolve_precision,
    save_interval,
    step_seed,
)
from .run_report import plot_losses, summarize
from .shards import PreparedData, is_prepared, model_inputs
from .stopping import MAX_TIME_EXIT_CODE, InterruptFlag, SetupSignals, SetupStopped, parse_duration
from .tokenizer import load_tokenizer, prepare_tokenizer, special_token_ids

METRICS_FILE = "metrics.jsonl"
LOGGED = ("loss", "mlm_loss", "rtd_loss", "generator_accuracy", "discriminator_accuracy", "replaced_fraction")
# Exit code of a run stopped by --max-bad-steps consecutive non-finite steps (nothing saved after them).
DIVERGED_EXIT_CODE = 3


@dataclass
class PretrainResult:
    output_dir: Path
    steps_done: int
    interrupted: bool
    summary: str
    exit_code: int = 0  # of an interrupted run: 128 + the stop signal's number, 124 after --max-time, 3 diverged


def prepare_output_dir(path: Path) -> None:
    """Create the output directory and prove it is writable before any work is done (``Run`` has already
    refused a path that is a file)."""
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
    for directory, _, _ in os.walk(path, topdown=False):  # the deepest first, ``path`` itself last
        with contextlib.suppress(OSError):  # not empty
            os.rmdir(directory)
    if path.exists() or path == top:
        return
    for directory in path.parents:
        try:
            os.rmdir(directory)
        except OSError:
            return
        if directory == top:
            return


def skip_update_on_device(optimizer: torch.optim.Optimizer, skipped: torch.Tensor) -> None:
    """``optimizer.step()`` unless ``skipped`` (a bool tensor on the device), without reading it on the host.

    The fused AdamW takes ``found_inf`` as the AMP grad scaler passes it: where it is 1 the kernel leaves the
    parameters, the moments and the step count as they were. Other optimisers read the flag (one
    synchronisation)."""
    if getattr(optimizer, "_step_supports_amp_scaling", False) and optimizer.defaults.get("fused"):
        optimizer.found_inf = skipped.float()
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif not bool(skipped):
        optimizer.step()


def check_model_size(config: PretrainConfig) -> None:
    """The preset with its size overrides exists and takes --max-length (checked before any data work)."""
    try:
        preset = get_preset(config.preset, **model_sizes(config))
    except ValueError as error:
        raise UserInputError(str(error)) from None
    generator_hidden = preset.generator_hidden_size
    for model, hidden, heads in [("discriminator", preset.hidden_size, preset.num_heads),
                                 ("generator", generator_hidden, generator_heads(generator_hidden))]:
        if hidden % heads:
            flags = "--num-heads" if model == "discriminator" else "--generator-hidden-size (its heads: size // 64)"
            raise UserInputError(f"the {model}'s hidden size {hidden} is not divisible by its {heads} attention heads; "
                                 f"change {flags}")
    if config.max_length > preset.max_position_embeddings:
        raise UserInputError(
            f"--max-length {config.max_length} is above the {preset.max_position_embeddings} position "
            f"embeddings of preset {config.preset!r}"
        )


def model_sizes(config: PretrainConfig) -> dict:
    return {name: getattr(config, name) for name in SIZE_FIELDS if getattr(config, name) is not None}


def build_pretrainer(config: PretrainConfig, tokenizer) -> ElectraPretrainer:
    check_model_size(config)
    sizes = model_sizes(config)
    objective = {name: getattr(config, name) for name in OBJECTIVE_FIELDS if getattr(config, name) is not None}
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


def pretrain(
    config: PretrainConfig,
    *,
    after_step: Optional[Callable[[int], None]] = None,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
    given: Optional[set] = None,
) -> PretrainResult:
    """Run (or resume) one pre-training run; ``after_step(step)`` is called after every optimiser step.
    A resumed run takes its checkpoint's settings; ``given`` names the settings the caller passed (the command
    line's flags), which must agree with them unless they may change (None: all of them).

    Under ``torchrun`` (``WORLD_SIZE > 1``) each process trains a DistributedDataParallel replica on its own
    share of the batches; rank 0 alone writes files and messages (see electra_fast/distributed.py)."""
    started = time.monotonic()  # --max-time counts from here
    output_dir = Path(config.output_dir).expanduser()
    created = first_missing_directory(output_dir)
    setup = SetupSignals()
    try:
        with setup:
            return Run(config, log, given, setup).train(after_step, started)
    except BaseException as error:
        if created is not None and distributed.is_main_process():
            remove_empty_directories(output_dir, created)  # a failed run leaves no empty folders behind
        if not isinstance(error, SetupStopped):
            raise
        newest = newest_checkpoint(output_dir) if output_dir.is_dir() else None
        kept = f"{newest} is kept (--resume continues from it)" if newest else "nothing to resume yet"
        log(f"{signal.Signals(error.signal_number).name}: stopped during {setup.stage}; {kept}")
        return PretrainResult(output_dir, 0, True, "", 128 + error.signal_number)
    finally:
        distributed.teardown()


def check_prepared(config: PretrainConfig, prepared: PreparedData, tokenizer) -> None:
    """A prepared ``--data`` directory fixes the max length, packing and held-out split: the flags must agree."""
    manifest = prepared.manifest
    differences = [f"--{flag} {value!r} (prepared: {manifest[key]!r})" for flag, key, value in [
        ("max-length", "max_length", config.max_length), ("packing", "packing", config.packing),
        ("eval-fraction", "eval_fraction", config.eval_fraction)] if value != manifest[key]]
    if tokenizer_hash(tokenizer) != manifest["fingerprint"]["tokenizer_sha256"]:
        differences.append(f"--tokenizer {config.tokenizer} (not the tokenizer the data was prepared with)")
    if differences:
        raise UserInputError(f"--data {config.data} was prepared with other settings: " + "; ".join(differences)
                             + "; pass the prepared settings or prepare the data again")


class Run:
    """One process's part of a run: ``__init__`` checks everything and builds the data, model and optimiser
    (resuming if asked), ``train`` runs the loop and finishes."""

    def __init__(self, config: PretrainConfig, log: Callable[[str], None], given: Optional[set] = None,
                 setup: Optional[SetupSignals] = None):
        self.setup = setup or SetupSignals()  # not entered here: its ``stage`` names what the run is doing
        self.setup.enter("the checks of the settings")
        check_config(config)
        if Path(config.output_dir).expanduser().is_file():
            raise UserInputError(f"--output-dir {config.output_dir} is a file, not a directory")
        # User errors first, before any work (training a tokenizer takes a while).
        resume_path, state = (None, None) if config.resume is None else resume_state(
            config.resume, Path(config.output_dir).expanduser(), log)
        if state is not None:
            config = resumed_config(config, state["config"], resume_path, given)
        # Saved absolute, so that the run resumes from any working directory.
        config = dataclasses.replace(config, **{key: str(Path(getattr(config, key)).expanduser().resolve())
                                                for key in PATH_SETTINGS if getattr(config, key) is not None})
        self.config = config
        self.output_dir = output_dir = Path(config.output_dir).expanduser()
        self.device = device = distributed.local_device(resolve_device(config.device))
        if requested_backend() == "triton" and not triton_can_run(device):
            raise UserInputError(
                f"--backend triton cannot run on {device}: the Triton kernels need a CUDA device (or "
                "TRITON_INTERPRET=1 for the slow interpreter on the CPU); use --backend auto"
            )
        distributed.setup(device)
        self.main_process = distributed.is_main_process()
        self.log = log if self.main_process else (lambda message: None)  # rank 0 reports for all
        if self.main_process:
            prepare_output_dir(output_dir)
        self.autocast_dtype = resolve_precision(config.precision, device)
        self.metrics_path = output_dir / METRICS_FILE
        if config.resume is None and checkpoint_files(output_dir) and not config.overwrite:
            raise UserInputError(
                f"{output_dir} already holds a run; pass --resume to continue it or --overwrite to start over"
            )
        if config.resume is None and self.main_process:
            for stale in checkpoint_files(output_dir) + [self.metrics_path]:
                stale.unlink(missing_ok=True)
        self._build(config)
        self.step = 0
        if state is not None:
            self._resume(resume_path, state)
        self.pending: list = []  # (step, [metrics, grad norm, skipped] on the device, tokens, lr) not yet written
        self.bad_in_a_row = 0  # trailing skipped steps, as of the last flush
        self.last_step_skipped = False
        self.last_flush = time.perf_counter()
        self.progress = None

    def _build(self, config: PretrainConfig) -> None:
        """Tokenizer and prepared data, model, optimiser, schedule, grad scaler, training and held-out batches."""
        check_model_size(config)
        if not self.main_process:
            distributed.barrier()  # rank 0 first trains the tokenizer and prepares the data; the others then load them
        prepared, tokenizer = self._prepared_data(config)
        if self.main_process:
            distributed.barrier()
        self.tokenizer = tokenizer
        self.setup.enter("the model's construction")
        torch.manual_seed(config.seed)
        self.model = build_pretrainer(config, tokenizer).to(self.device)
        self.training_model = distributed.wrap(self.model, self.device)  # DDP copies rank 0's weights to all
        if config.compile:
            self.training_model = torch.compile(self.training_model)
        distributed.seed_this_rank(config.seed)
        lr = config.lr if config.lr is not None else get_preset(config.preset).learning_rate
        warmup = config.warmup_steps if config.warmup_steps is not None else min(10_000, config.steps // 10)
        self.optimizer, self.scheduler = build_optimizer_and_scheduler(
            self.model, lr=lr, warmup_steps=warmup, total_steps=config.steps, weight_decay=config.weight_decay
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)
        self.batches = TrainingBatches(prepared, batch_size=config.batch_size, seed=config.seed,
                                       rank=distributed.rank(), world_size=distributed.world_size(),
                                       workers=config.data_workers, pin_memory=self.device.type == "cuda")
        self.evaluating = config.eval_fraction > 0
        self.held_out_batches = []
        if self.evaluating and self.main_process:
            self.held_out_batches = held_out_batches(prepared, sequences=config.eval_sequences,
                                                     batch_size=config.batch_size)
            if not self.held_out_batches:
                self.log(f"--eval-fraction {config.eval_fraction} holds out no document of this small corpus: "
                         "no evaluation")
        self.eval_sequences = sum(len(batch["input_ids"]) for batch in self.held_out_batches)

    def _prepared_data(self, config: PretrainConfig) -> tuple:
        """(PreparedData, tokenizer): ``--data`` itself if it is a prepared directory, else the corpus prepared into
        (or reused from) OUTPUT_DIR/data with the tokenizer given or trained on it."""
        workers = config.prepare_workers if config.prepare_workers is not None else default_workers()
        if config.data is not None and is_prepared(Path(config.data).expanduser()):
            prepared = PreparedData(Path(config.data).expanduser())
            tokenizer = load_tokenizer(config.tokenizer or str(prepared.directory / "tokenizer"))
            check_prepared(config, prepared, tokenizer)
            return prepared, tokenizer
        corpus = open_corpus(config.data, config.text_field)
        vocab_size = config.vocab_size or (4000 if config.preset == "tiny" else 30522)
        self.setup.enter("tokenizer training" if config.tokenizer is None else "tokenizer loading")
        tokenizer = prepare_tokenizer(config.tokenizer, corpus, vocab_size, self.output_dir / "tokenizer", workers,
                                      log=self.log)
        self.setup.enter("the data preparation")
        prepared = prepared_cache(corpus, tokenizer, self.output_dir / "data", max_length=config.max_length,
                                  packing=config.packing, eval_fraction=config.eval_fraction, workers=workers,
                                  log=self.log)
        return prepared, tokenizer

    def _resume(self, path: Path, state: dict) -> None:
        if state.get("world_size", 1) != distributed.world_size():
            raise UserInputError(
                f"cannot resume from {path}: it was trained by {state.get('world_size', 1)} processes, now "
                f"{distributed.world_size()} (the data split and the RNG states depend on it)"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.batches.load_state_dict(state["data"])
        restore_rng_states(state["rng"][distributed.rank()] if distributed.is_distributed() else state["rng"])
        self.step = state["step"]
        if state["config"]["steps"] != self.config.steps:
            self.log(f"--steps changed from {state['config']['steps']} to {self.config.steps}: the learning-rate "
                     "schedule now decays to 0 at the new last step, so the run is no longer the one it would "
                     "have been")
        if self.main_process:
            keep_metrics_up_to(self.metrics_path, self.step)
        self.log(f"resumed from {path} at step {self.step}")

    # --------------------------------------------------------------------------------- writing things down

    def checkpoint(self) -> Optional[Path]:
        """Rank 0 saves (with every process's RNG states under torchrun); the others wait for it."""
        rng = distributed.gather_objects(rng_states()) if distributed.is_distributed() else rng_states()
        path = None
        if self.main_process:
            state = {
                "step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "data": self.batches.state_dict(), "rng": rng, "config": dataclasses.asdict(self.config),
                "world_size": distributed.world_size(),
            }
            path = save_checkpoint(self.output_dir, state, self.config.keep_checkpoints)
        distributed.barrier()
        return path

    def append_metrics(self, records: list) -> None:
        with open(self.metrics_path, "a") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")

    def evaluate(self) -> None:
        """Rank 0 measures the held-out split and logs it as an ``eval_*`` row; the others wait."""
        from tqdm.auto import tqdm

        if self.held_out_batches:
            results = evaluate(self.model, self.held_out_batches, self.device, self.autocast_dtype, self.config.seed)
            self.append_metrics([{"step": self.step, **results, "eval_sequences": self.eval_sequences}])

            def shown(value):
                return "n/a" if value is None else f"{value:.3f}"

            tqdm.write(f"held-out at step {self.step}: discriminator ROC AUC {shown(results['eval_rtd_auc'])} "
                       f"(random replacements {shown(results['eval_random_auc'])}), generator MLM accuracy "
                       f"{shown(results['eval_mlm_accuracy'])}", file=sys.stderr)
        distributed.barrier()

    def flush(self) -> None:
        """Write the pending steps' metrics: one device synchronisation for all of them (under torchrun the
        metrics averaged over the processes and the tokens of all of them). The steps' skipped flags are read here
        too: a skipped step is reported, and ``bad_in_a_row`` counts the trailing run of them."""
        from tqdm.auto import tqdm

        if not self.pending:
            return
        now = time.perf_counter()
        # One read for the metrics and the skipped flag (the last column; the same on every process).
        values = distributed.mean_across_ranks(torch.stack([row[1] for row in self.pending])).tolist()
        tokens = torch.tensor([row[2] for row in self.pending], device=self.device)
        tokens = distributed.sum_across_ranks(tokens).tolist()
        tokens_per_second = sum(tokens) / max(now - self.last_flush, 1e-9)
        rows = [(step, step_tokens, lr, bool(row[-1]))
                for (step, _, _, lr), step_tokens, row in zip(self.pending, tokens, values)]
        self.pending.clear()
        self.last_flush = now
        for step, _, _, skipped in rows:
            self.bad_in_a_row = self.bad_in_a_row + 1 if skipped else 0
            if skipped and self.main_process:
                tqdm.write(f"step {step}: the loss or gradient is not finite; the step was skipped "
                           f"({self.bad_in_a_row} in a row, the run stops at {self.config.max_bad_steps})",
                           file=sys.stderr)
        self.last_step_skipped = rows[-1][3]
        if not self.main_process:
            return
        self.append_metrics([
            {"step": step, **dict(zip(LOGGED + ("grad_norm",), row)), "lr": lr, "tokens": step_tokens,
             "tokens_per_second": tokens_per_second, "skipped": skipped}
            for (step, step_tokens, lr, skipped), row in zip(rows, values)
        ])
        last = dict(zip(LOGGED, values[-1]))
        self.progress.set_postfix(
            loss=f"{last['loss']:.3f}", mlm=f"{last['mlm_loss']:.3f}", rtd=f"{last['rtd_loss']:.3f}",
            gen_acc=f"{last['generator_accuracy']:.3f}", disc_acc=f"{last['discriminator_accuracy']:.3f}",
            tok_s=f"{tokens_per_second:,.0f}", refresh=False,
        )

    # --------------------------------------------------------------------------------------------- training

    def train_step(self) -> None:
        """One optimiser step over ``grad_accum`` micro-batches; its metrics and whether it was skipped for a
        non-finite loss (or gradient), both still on the device, join ``pending``."""
        config, device = self.config, self.device
        step_metrics = torch.zeros(len(LOGGED), device=device)
        tokens = 0
        for micro in range(config.grad_accum):
            batch = next(self.batches)  # this process's rows only, compact; built ahead by the loader
            tokens += int(batch["meta"][:, 0].sum())  # on the host: no device synchronisation
            inputs = model_inputs(batch, device)
            input_ids, attention_mask, token_type_ids = (
                inputs[key] for key in ("input_ids", "attention_mask", "token_type_ids"))
            seed = step_seed(config.seed, self.step, micro, config.grad_accum, distributed.rank(),
                             distributed.world_size())
            with distributed.gradient_sync(self.training_model, micro == config.grad_accum - 1):
                with torch.autocast(device.type, dtype=self.autocast_dtype or torch.float32,
                                    enabled=self.autocast_dtype is not None):
                    out = self.training_model(input_ids, attention_mask, token_type_ids=token_type_ids, seed=seed)
                self.scaler.scale(out.loss / config.grad_accum).backward()
            step_metrics += torch.stack([getattr(out, name).detach().float() for name in LOGGED])
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        # A non-finite loss (or, without fp16's grad scaler, which skips those itself, a non-finite gradient) on
        # any process skips the update, decided on the device (skip_update_on_device).
        finite = torch.isfinite(step_metrics[0])
        if not self.scaler.is_enabled():
            finite = finite & torch.isfinite(grad_norm)
        skipped = distributed.any_rank_on_device(~finite)
        if self.scaler.is_enabled():
            if not bool(skipped):  # fp16: the scaler's own step; this costs one synchronisation per step
                self.scaler.step(self.optimizer)
        else:
            skip_update_on_device(self.optimizer, skipped)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.pending.append((self.step, torch.cat([step_metrics / config.grad_accum, grad_norm.float()[None],
                                                   skipped.float()[None]]), tokens, lr))

    def train(self, after_step, started: Optional[float] = None) -> PretrainResult:
        """The loop and the end of the run; --max-time counts from ``started`` (time.monotonic(); default now)."""
        from tqdm.auto import tqdm

        config, step = self.config, self.step
        self.model.train()
        if use_cpu_path(self.device) and not triton_can_run(self.device) and compile_enabled():
            self.log("the first steps compile the CPU path's fused loops (tens of seconds, the first time on a "
                     "machine; later runs load them from torch.compile's cache)")
        if self.evaluating and step == 0:
            self.setup.enter("the evaluation of the untrained model")
            self.evaluate()  # the untrained baseline
        self.progress = tqdm(total=config.steps, initial=step, desc="pretrain", unit="step", dynamic_ncols=True,
                             disable=not self.main_process)
        max_seconds = parse_duration(config.max_time) if config.max_time is not None else None
        started = time.monotonic() if started is None else started
        save_every = save_interval(config)

        def stop_requested(interrupt: InterruptFlag) -> bool:
            """A signal or --max-time on any process stops every process before the same step (a collective)."""
            if max_seconds is not None and not interrupt.requested and time.monotonic() - started >= max_seconds:
                interrupt.requested = interrupt.timed_out = True
                self.log(f"--max-time {config.max_time} reached: stopping to save a checkpoint")
            return distributed.any_rank(interrupt.requested, self.device)

        self.setup.enter("the first step")
        with InterruptFlag() as interrupt:
            while (self.step < config.steps and self.bad_in_a_row < config.max_bad_steps
                   and not stop_requested(interrupt)):
                self.train_step()
                step = self.step
                self.progress.update(1)
                if step % config.log_every == 0 or step == config.steps:
                    self.flush()
                if self.evaluating and step % config.eval_every == 0 and step < config.steps:
                    self.flush()
                    self.evaluate()
                if step % save_every == 0 and step < config.steps:
                    self.flush()
                    if not self.last_step_skipped:
                        self.checkpoint()
                if after_step is not None:
                    after_step(step)
        self.setup.enter("the end of the run (saving)")
        self.progress.close()
        self.flush()
        self.batches.close()
        if self.bad_in_a_row >= config.max_bad_steps:
            newest = newest_checkpoint(self.output_dir)
            kept = f"the last good checkpoint is {newest}" if newest else "no checkpoint was saved before"
            self.log(f"stopped at step {self.step}: {self.bad_in_a_row} steps in a row had a non-finite loss or "
                     f"gradient; {kept} (lower --lr, raise --warmup-steps or check the data, then --resume from it)")
            return PretrainResult(self.output_dir, self.step, True, "", DIVERGED_EXIT_CODE)
        if self.step < config.steps:  # stopped by a signal or --max-time (on some rank)
            self.log(f"interrupted at step {self.step}: saved {self.checkpoint()}; run the same command with "
                     "--resume to continue")
            exit_code = MAX_TIME_EXIT_CODE if interrupt.timed_out else 128 + (interrupt.signal_number or signal.SIGINT)
            return PretrainResult(self.output_dir, self.step, True, "", exit_code)
        return self.finish()

    def finish(self) -> PretrainResult:
        """The last checkpoint and evaluation, then (rank 0) the Hugging Face models, the plot and the summary."""
        self.checkpoint()
        if self.evaluating:
            self.evaluate()  # the final model
        if not self.main_process:
            distributed.barrier()  # until rank 0 has saved the models
            return PretrainResult(self.output_dir, self.step, False, "")
        config, model, output_dir = self.config, self.model, self.output_dir
        model.save_pretrained(str(output_dir))
        # Saved with the models' length limit, so that truncation=True gives inputs the saved models accept.
        self.tokenizer.model_max_length = model.discriminator.config.max_position_embeddings
        for part in ("discriminator", "generator"):
            self.tokenizer.save_pretrained(str(output_dir / part))
        metrics = read_metrics(self.metrics_path)
        plot_losses(metrics, output_dir / "loss.png")
        precision = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[self.autocast_dtype]
        processes = distributed.world_size()
        summary = summarize(
            preset=config.preset, sequences_per_step=processes * config.batch_size * config.grad_accum,
            max_length=config.max_length, generator_parameters=sum(p.numel() for p in model.generator.parameters()),
            discriminator_parameters=sum(p.numel() for p in model.discriminator.parameters()), metrics=metrics,
            placement=f"{processes} processes ({self.device.type}, DDP)" if processes > 1 else str(self.device),
            precision=precision, output_dir=output_dir, metrics_file=METRICS_FILE, eval_sequences=self.eval_sequences,
        )
        (output_dir / "summary.txt").write_text(summary + "\n")
        distributed.barrier()
        return PretrainResult(output_dir, self.step, False, summary)
