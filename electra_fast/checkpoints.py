"""Checkpoints and resuming of ``electra-fast pretrain``: written atomically, read back with a fallback.

A checkpoint is ``checkpoints/step-XXXXXXX.pt`` (``torch.save`` of a dict holding the model, optimiser,
scheduler, grad scaler, data position, RNG states, step and config). It is written to a temporary file and
then renamed, so a killed save never leaves a half-written ``step-*.pt``; the newest ``keep`` are kept. A file
damaged anyway (a full disk, a copy cut short) is reported by name, and ``--resume latest`` then falls back
to the checkpoint before it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path
from typing import Callable, Optional

import torch

from . import distributed
from .errors import UserInputError
from .run_config import INVOCATION_SETTINGS, PATH_SETTINGS, RESUMABLE_CHANGES

CHECKPOINT_DIR = "checkpoints"
REQUIRED_KEYS = ("step", "model", "optimizer", "scheduler", "scaler", "data", "rng", "config")


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


def load_checkpoint(path: Path) -> dict:
    """The state saved in ``path``; a file that is not a complete checkpoint raises UserInputError naming it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)  # RNG states must stay on the CPU
    except Exception as error:  # truncated zip, bad pickle, unreadable file: all mean "cannot resume from it"
        raise UserInputError(f"checkpoint {path} cannot be loaded ({type(error).__name__}: {error})") from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise UserInputError(f"checkpoint {path} is not an electra-fast checkpoint (no {', '.join(missing)})")
    return state


def resume_state(resume: str, output_dir: Path, log: Callable[[str], None]) -> tuple:
    """(path, state) to resume from: ``resume`` is a file, or "latest": the newest checkpoint of ``output_dir``
    that loads, with a warning for each newer one that does not."""
    if resume != "latest":
        path = Path(resume).expanduser()
        if not path.is_file():
            raise UserInputError(f"--resume {resume}: no such checkpoint file")
        return path, load_checkpoint(path)
    candidates = checkpoint_files(output_dir)
    if not candidates:
        raise UserInputError(f"--resume: no checkpoint in {output_dir / CHECKPOINT_DIR} to resume from")
    failures = []
    for path in reversed(candidates):
        try:
            return path, load_checkpoint(path)
        except UserInputError as error:
            failures.append(str(error))
            older = "an older checkpoint" if path != candidates[0] else "nothing older"
            log(f"warning: {error}; trying {older}")
    raise UserInputError("--resume latest: no checkpoint in "
                         f"{output_dir / CHECKPOINT_DIR} can be loaded: " + "; ".join(failures))


def run_folder(checkpoint: Path) -> Path:
    """The run folder a checkpoint file belongs to (RUN/checkpoints/step-*.pt)."""
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINT_DIR else checkpoint.parent


def same_setting(key: str, saved, current) -> bool:
    """Paths are the same when they resolve to the same place (relative or absolute, ~ or not)."""
    if key in PATH_SETTINGS and saved is not None and current is not None:
        return Path(saved).expanduser().resolve() == Path(current).expanduser().resolve()
    return saved == current


def resumed_config(config, saved: dict, path: Path, given: Optional[set] = None):
    """The settings of a run resumed from the checkpoint ``path``: the checkpoint's own, except what
    RESUMABLE_CHANGES allows to change among ``given`` (the settings passed explicitly; None: all of ``config``,
    as from Python). Another setting passed with a value other than the checkpoint's is an error listing all
    of them. The run folder is where the run is resumed (by default the checkpoint's own folder when a file
    is named), not where it was first written, so a moved or copied run folder resumes."""
    current = dataclasses.asdict(config)
    given = set(current) if given is None else given
    settings, differences = {}, []
    for key, value in current.items():
        if key in INVOCATION_SETTINGS or key not in saved or (key in given and key in RESUMABLE_CHANGES):
            settings[key] = value
        elif key in given and not same_setting(key, saved[key], value):
            differences.append(f"--{key.replace('_', '-')} {saved[key]!r} -> {value!r}")
        else:
            settings[key] = saved[key]
    if differences:
        changeable = ", ".join(f"--{key.replace('_', '-')}" for key in sorted(RESUMABLE_CHANGES))
        raise UserInputError(
            f"cannot resume from {path}: these settings differ from the checkpoint's: " + "; ".join(differences)
            + f" (a resumed run keeps its settings; only {changeable} may change: leave the others out)"
        )
    if "output_dir" not in given and config.resume != "latest":
        settings["output_dir"] = str(run_folder(path))
    return dataclasses.replace(config, **settings)


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


def newest_checkpoint(output_dir: Path) -> Optional[Path]:
    files = checkpoint_files(output_dir)
    return files[-1] if files else None
