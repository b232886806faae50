"""`electra-fast pretrain` end to end: the default command, HF checkpoints, exact resume, Ctrl-C, errors."""

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from electra_fast import cli, use_backend
from electra_fast.run_config import PretrainConfig
from electra_fast.training import pretrain

REPO = Path(__file__).resolve().parents[1]
# Small enough for a 2-core CPU: the reference ops (the kernels have their own tests), 32-token sequences.
SMALL = ["--max-length", "32", "--batch-size", "4", "--backend", "reference",
         "--eval-sequences", "16"]


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """The default command (tiny preset, embedded corpus, trained tokenizer) at a small size, run once."""
    output_dir = tmp_path_factory.mktemp("default-run")
    code = cli.main(["pretrain", "--steps", "4", "--vocab-size", "500", "--output-dir", str(output_dir), *SMALL])
    assert code == 0
    return output_dir


@pytest.fixture(scope="session")
def tokenizer_dir(default_run):
    return default_run / "tokenizer"


def read_all_metrics(output_dir):
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def read_metrics(output_dir):
    """The training steps' rows (without the held-out evaluations' eval_* rows)."""
    return [row for row in read_all_metrics(output_dir) if "loss" in row]


def test_default_command_writes_everything(default_run, capsys):
    for name in ("metrics.jsonl", "loss.png", "summary.txt", "discriminator/config.json",
                 "generator/config.json", "discriminator/tokenizer.json", "tokenizer/tokenizer.json"):
        assert (default_run / name).is_file(), name
    metrics = read_metrics(default_run)
    assert [row["step"] for row in metrics] == [1, 2, 3, 4]
    for row in metrics:
        assert all(torch.isfinite(torch.tensor(row[key])) for key in ("loss", "mlm_loss", "rtd_loss", "grad_norm"))
        assert row["loss"] == pytest.approx(row["mlm_loss"] + 50 * row["rtd_loss"], rel=1e-5)
        assert 0 <= row["generator_accuracy"] <= 1 and 0 <= row["discriminator_accuracy"] <= 1
        assert row["tokens"] > 0
    # --save-every defaults to a fifth of the steps (at least 1): a short run saves along the way.
    assert [p.name for p in sorted((default_run / "checkpoints").glob("*.pt"))] == [
        "step-0000002.pt", "step-0000003.pt", "step-0000004.pt"]
    evaluations = [row for row in read_all_metrics(default_run) if "eval_rtd_auc" in row]
    assert [row["step"] for row in evaluations] == [0, 4]  # the untrained baseline and the end
    for row in evaluations:
        assert row["eval_sequences"] == 16 and 0 <= row["eval_mlm_accuracy"] <= 1 and row["eval_mlm_loss"] > 0
        for key in ("eval_rtd_auc", "eval_rtd_balanced_accuracy", "eval_random_auc", "eval_random_balanced_accuracy"):
            assert 0 <= row[key] <= 1, key
    summary = (default_run / "summary.txt").read_text()
    assert "ELECTRA-tiny" in summary and "4 steps" in summary and "On 16 held-out sequences, from step 0" in summary
    assert (default_run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_plot_labels_its_axes_and_the_chance_line(default_run):
    from electra_fast.checkpoints import read_metrics as read_metric_rows
    from electra_fast.run_report import loss_figure

    figure = loss_figure(read_metric_rows(default_run / "metrics.jsonl"))
    assert len(figure.axes) == 5 and all(axis.get_ylabel() for axis in figure.axes)
    held_out = figure.axes[-1]
    assert "AUC 0.5: chance" in [text.get_text() for text in held_out.get_legend().get_texts()]


def test_checkpoints_load_in_transformers(default_run):
    from transformers import AutoTokenizer, ElectraForMaskedLM, ElectraForPreTraining, ElectraForSequenceClassification

    classifier = ElectraForSequenceClassification.from_pretrained(str(default_run / "discriminator"), num_labels=3)
    tokenizer = AutoTokenizer.from_pretrained(str(default_run / "discriminator"))
    batch = tokenizer(["The assert statement is a debugging aid.", "Lists are mutable."], padding=True,
                      return_tensors="pt")
    logits = classifier(**batch).logits
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    assert tokenizer.mask_token == "[MASK]" and tokenizer.decode(batch["input_ids"][1][:1]) == "[CLS]"
    # The saved tokenizer truncates to the model's length: a long text runs through the saved model.
    assert tokenizer.model_max_length == classifier.config.max_position_embeddings
    long_text = tokenizer([" ".join(["lists are mutable"] * 400)], truncation=True, return_tensors="pt")
    assert long_text["input_ids"].shape[1] == classifier.config.max_position_embeddings
    assert torch.isfinite(classifier(**long_text).logits).all()
    # Tied embeddings: both saved models carry the same trained word embeddings.
    discriminator = ElectraForPreTraining.from_pretrained(str(default_run / "discriminator"))
    generator = ElectraForMaskedLM.from_pretrained(str(default_run / "generator"))
    assert torch.equal(discriminator.electra.embeddings.word_embeddings.weight,
                       generator.electra.embeddings.word_embeddings.weight)
    state = torch.load(default_run / "checkpoints" / "step-0000004.pt", weights_only=False)
    assert torch.equal(state["model"]["discriminator.discriminator_predictions.dense.weight"],
                       discriminator.discriminator_predictions.dense.weight)


def small_config(output_dir, tokenizer_dir, **changes):
    config = PretrainConfig(output_dir=str(output_dir), tokenizer=str(tokenizer_dir), max_length=32, batch_size=3,
                            grad_accum=2, steps=6, save_every=2, keep_checkpoints=2, warmup_steps=2,
                            eval_every=2, eval_sequences=6)
    return dataclasses.replace(config, **changes)


def test_interrupted_and_resumed_run_logs_the_same_losses(tmp_path, tokenizer_dir):
    def ctrl_c_at_step_3(step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # a real SIGINT: the handler stops after the step and saves

    with use_backend("reference"):
        uninterrupted = pretrain(small_config(tmp_path / "straight", tokenizer_dir), log=lambda message: None)
        first_part = pretrain(small_config(tmp_path / "resumed", tokenizer_dir), after_step=ctrl_c_at_step_3)
        assert first_part.interrupted and first_part.steps_done == 3
        assert (tmp_path / "resumed" / "checkpoints" / "step-0000003.pt").is_file()
        assert not (tmp_path / "resumed" / "discriminator").exists()
        second_part = pretrain(small_config(tmp_path / "resumed", tokenizer_dir, resume="latest"))
    assert not uninterrupted.interrupted and not second_part.interrupted
    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert [row["step"] for row in resumed] == list(range(1, 7))
    for key in ("loss", "mlm_loss", "rtd_loss", "generator_accuracy", "discriminator_accuracy", "grad_norm", "lr",
                "tokens"):
        assert [row[key] for row in resumed] == [row[key] for row in straight], key
    assert len({row["loss"] for row in straight}) == 6  # the steps differ: the comparison means something
    # Evaluating does not disturb the run, and the resumed run evaluates at the same steps with the same results.
    assert read_all_metrics(tmp_path / "resumed") == [
        {**row, "tokens_per_second": row_resumed["tokens_per_second"]} if "tokens_per_second" in row else row
        for row, row_resumed in zip(read_all_metrics(tmp_path / "straight"), read_all_metrics(tmp_path / "resumed"))]
    assert [row["step"] for row in read_all_metrics(tmp_path / "straight") if "eval_rtd_auc" in row] == [0, 2, 4, 6]
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == [
        "step-0000004.pt", "step-0000006.pt"]
    from safetensors.torch import load_file

    weights = [load_file(tmp_path / run / "discriminator" / "model.safetensors") for run in ("straight", "resumed")]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_python_dash_m_smoke_run(tmp_path, tokenizer_dir):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("ELECTRA trains a discriminator.\nIt detects replaced tokens.\n\nA second document.\n" * 20)
    result = subprocess.run(
        [sys.executable, "-m", "electra_fast", "pretrain", "--data", str(corpus), "--tokenizer", str(tokenizer_dir),
         "--steps", "2", "--output-dir", str(tmp_path / "run"), *SMALL],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Pre-trained ELECTRA-tiny" in result.stdout
    assert (tmp_path / "run" / "discriminator" / "model.safetensors").is_file()


def test_two_runs_from_scratch_are_bitwise_identical(tmp_path):
    """Same command, two fresh processes (so different hash seeds), nothing cached: the same tokenizer file and
    the same metrics, bit for bit."""
    command = [sys.executable, "-m", "electra_fast", "pretrain", "--steps", "3", "--vocab-size", "300",
               "--log-every", "1", *SMALL]
    processes = [subprocess.Popen(command + ["--output-dir", str(tmp_path / name)], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in "ab"]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    first, second = tmp_path / "a", tmp_path / "b"
    tokenizer_files = [(run / "tokenizer" / "tokenizer.json").read_bytes() for run in (first, second)]
    assert tokenizer_files[0] == tokenizer_files[1]
    without_timing = [[{key: value for key, value in row.items() if key != "tokens_per_second"}
                       for row in read_all_metrics(run)] for run in (first, second)]
    assert [row["step"] for row in without_timing[0]] == [0, 1, 2, 3, 3]  # evaluations at 0 and the end
    assert without_timing[0] == without_timing[1]


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")
@pytest.mark.parametrize("stop_signal", ["SIGTERM", "SIGUSR1"])
def test_scheduler_signals_stop_after_the_step_with_a_checkpoint(tmp_path, tokenizer_dir, stop_signal):
    """SLURM and Kubernetes send SIGTERM (SLURM's --signal sends USR1 first): finish the step, save, exit 128 + N."""
    output_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "electra_fast", "pretrain", "--tokenizer", str(tokenizer_dir), "--steps", "100000",
         "--log-every", "1", "--output-dir", str(output_dir), *SMALL],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    metrics = output_dir / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 240
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.2)
        process.send_signal(getattr(signal, stop_signal))
        _, err = process.communicate(timeout=240)
    finally:
        process.kill()
    assert process.returncode == 128 + getattr(signal, stop_signal), err
    assert f"{stop_signal}: stopping after this step" in err and "interrupted at step" in err
    steps = [row["step"] for row in read_metrics(output_dir)]
    saved = torch.load(sorted((output_dir / "checkpoints").glob("step-*.pt"))[-1], weights_only=False)
    assert saved["step"] == steps[-1] >= 2 and steps == list(range(1, steps[-1] + 1))


def test_max_time_saves_and_exits_124(tmp_path, tokenizer_dir, capsys):
    from electra_fast.stopping import parse_duration

    assert parse_duration("3h30m") == 12600 and parse_duration("45m") == 2700 and parse_duration("90s") == 90
    assert parse_duration("600") == 600 and parse_duration("1.5h") == 5400
    # --max-time counts from the start of the run, so on a loaded machine the data preparation and the model may
    # take all of it (then step 0 is saved: test_max_time_counts_the_setup).
    code, err = run_cli(capsys, "--tokenizer", str(tokenizer_dir), "--steps", "100000", "--max-time", "6s",
                        "--log-every", "1", "--output-dir", str(tmp_path / "run"))
    assert code == 124 and "--max-time 6s reached" in err and "interrupted at step" in err, err
    steps = [row["step"] for row in read_metrics(tmp_path / "run")]
    last = steps[-1] if steps else 0
    assert steps == list(range(1, last + 1)) and (tmp_path / "run" / "checkpoints" / f"step-{last:07d}.pt").is_file()
    for bad in ("soon", "0", "3x", ""):
        code, err = run_cli(capsys, "--max-time", bad, "--output-dir", str(tmp_path / "bad"))
        assert code == 2 and "--max-time must be" in err, (bad, err)


def test_max_time_counts_the_setup(tmp_path, tokenizer_dir, capsys, monkeypatch):
    """A setup longer than --max-time leaves no time for a step: the run saves step 0 (to --resume) and exits 124."""
    from electra_fast import training

    prepare_tokenizer = training.prepare_tokenizer

    def slow_tokenizer(*args, **kwargs):
        time.sleep(1.5)
        return prepare_tokenizer(*args, **kwargs)

    monkeypatch.setattr(training, "prepare_tokenizer", slow_tokenizer)
    code, err = run_cli(capsys, "--tokenizer", str(tokenizer_dir), "--max-time", "1s", "--eval-fraction", "0",
                        "--output-dir", str(tmp_path / "run"))
    assert code == 124 and "--max-time 1s reached" in err and "interrupted at step 0" in err, err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # no step
    assert (tmp_path / "run" / "checkpoints" / "step-0000000.pt").is_file()


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")
@pytest.mark.parametrize("stop_signal", ["SIGINT", "SIGTERM"])
def test_a_signal_during_setup_says_what_was_kept(tmp_path, stop_signal):
    process = subprocess.Popen(
        [sys.executable, "-m", "electra_fast", "pretrain", "--vocab-size", "300", "--steps", "1",
         "--output-dir", str(tmp_path / "run"), *SMALL],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines = []
        while not lines or "training a WordPiece tokenizer" not in lines[-1]:
            lines.append(process.stderr.readline())
            assert lines[-1], "".join(lines)
        process.send_signal(getattr(signal, stop_signal))
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + getattr(signal, stop_signal), err
    assert err.strip().splitlines()[-1] == f"{stop_signal}: stopped during tokenizer training; nothing to resume yet"
    assert "Traceback" not in err, err


def run_cli(capsys, *arguments):
    code = cli.main(["pretrain", *SMALL, *arguments])
    return code, capsys.readouterr().err


def test_bad_inputs_give_clear_errors(tmp_path, tokenizer_dir, default_run, capsys):
    tokenizer = ["--tokenizer", str(tokenizer_dir)]
    cases = [
        (["--data", str(tmp_path / "nowhere.txt")], "--data .*nowhere.txt: no such file or directory"),
        (["--tokenizer", str(tmp_path / "no-tokenizer")], "--tokenizer .*: no such file or directory"),
        ([*tokenizer, "--max-length", "300"], "--max-length 300 is above the 256 position embeddings"),
        ([*tokenizer, "--output-dir", str(tmp_path / "a-file" / "run")], "--output-dir .* cannot be written"),
        ([*tokenizer, "--output-dir", str(tmp_path / "a-file")], "--output-dir .*a-file is a file, not a directory"),
        ([*tokenizer, "--eval-fraction", "1"], r"--eval-fraction must be in \[0, 1\)"),
        ([*tokenizer, "--max-bad-steps", "0"], "--max-bad-steps must be at least 1"),
        ([*tokenizer, "--precision", "bf16", "--device", "cpu"], "--precision bf16 needs a CUDA device"),
        ([*tokenizer, "--steps", "0"], "--steps must be at least 1"),
        ([*tokenizer, "--output-dir", str(default_run)], "already holds a run; pass --resume"),
        ([*tokenizer, "--resume", "--output-dir", str(tmp_path / "fresh")], "no checkpoint in"),
        (["--resume", "--output-dir", str(default_run), "--batch-size", "2", "--vocab-size", "500"],
         r"settings differ from the checkpoint's: --batch-size 4 -> 2"),
    ]
    (tmp_path / "a-file").write_text("not a directory")
    for arguments, message in cases:
        code, err = run_cli(capsys, "--output-dir", str(tmp_path / "out"), *arguments)
        assert code == 2, arguments
        assert err.startswith("electra-fast pretrain: error: ") and len(err.strip().splitlines()) == 1, err
        assert re.search(message, err), (message, err)
    assert not (tmp_path / "out").exists() and not (tmp_path / "fresh").exists()  # no empty folders left behind
    # ... also when the run created several levels of them
    code, err = run_cli(capsys, "--tokenizer", str(tokenizer_dir), "--max-length", "300",
                        "--output-dir", str(tmp_path / "deep" / "er" / "run"))
    assert code == 2 and "--max-length 300" in err and not (tmp_path / "deep").exists(), err


def test_user_errors_come_before_the_tokenizer_is_trained(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # Triton cannot run on this CPU
    for arguments, message in [
        (["--backend", "triton"], "--backend triton cannot run on cpu"),
        (["--resume"], "no checkpoint in"),
    ]:
        output_dir = tmp_path / arguments[-1].strip("-")
        code, err = run_cli(capsys, "--output-dir", str(output_dir), *arguments)
        assert code == 2 and re.search(message, err) and len(err.strip().splitlines()) == 1, err
        assert not (output_dir / "tokenizer").exists()


def test_every_bad_value_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """Bad objective values, sizes and data are one-line errors naming the flag or file, before the tokenizer is
    trained or the corpus prepared."""
    from electra_fast import tokenizer

    def no_training(*args, **kwargs):
        raise AssertionError("the tokenizer was trained before the error")

    monkeypatch.setattr(tokenizer, "wordpiece_tokenizer", no_training)
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "nul.txt").write_text("text\x00with a NUL byte\n")
    (tmp_path / "other-field.jsonl").write_text('{"content": "a document"}\n' * 3)
    (tmp_path / "not-json.jsonl").write_text("plain text\n")
    (tmp_path / "unreadable.txt").write_text("some text\n")
    (tmp_path / "unreadable.txt").chmod(0)
    (tmp_path / "empty-tokenizer").mkdir()
    cases = [
        (["--mask-prob", "2"], r"--mask-prob must be in \(0, 1\], got 2.0"),
        (["--temperature", "0"], "--temperature must be > 0, got 0.0"),
        (["--random-token-prob", "0.5"], r"--mask-token-prob \+ --random-token-prob must be at most 1 .* 0.85 \+ 0.5"),
        (["--max-predictions", "0"], "--max-predictions must be at least 1, got 0"),
        (["--disc-weight", "nan"], "--disc-weight must be >= 0, got nan"),
        (["--num-heads", "3"], "hidden size 128 is not divisible by its 3 attention heads; change --num-heads"),
        (["--max-length", "0"], "--max-length must be at least 5, got 0"),
        (["--hidden-size", "0"], "--hidden-size must be at least 1, got 0"),
        (["--data", str(tmp_path / "binary.txt")], "cannot decode .*binary.txt as UTF-8 \\(line 1"),
        (["--data", str(tmp_path / "nul.txt")], "nul.txt line 1 holds NUL bytes: a binary file"),
        (["--data", str(tmp_path / "other-field.jsonl")], "other-field.jsonl line 1 has no field 'text'"),
        (["--data", str(tmp_path / "not-json.jsonl")], "not-json.jsonl line 1 is not valid JSON"),
        (["--tokenizer", str(tmp_path / "empty-tokenizer")], "empty-tokenizer: the directory holds no tokenizer"),
    ]
    if not os.access(tmp_path / "unreadable.txt", os.R_OK):  # root reads it anyway
        cases.append((["--data", str(tmp_path / "unreadable.txt")], "cannot read .*unreadable.txt: Permission denied"))
    for arguments, message in cases:
        code, err = run_cli(capsys, "--output-dir", str(tmp_path / "out"), *arguments)
        assert code == 2 and len(err.strip().splitlines()) == 1, (arguments, err)
        assert err.startswith("electra-fast pretrain: error: ") and re.search(message, err), (message, err)
        assert not (tmp_path / "out").exists()


def test_a_bad_choice_gets_a_short_usage(capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["pretrain", "--preset", "nonsense"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.splitlines() == [
        "usage: electra-fast pretrain [options] (--help lists them)",
        "electra-fast pretrain: error: argument --preset: invalid choice: 'nonsense' (choose from 'base', 'large', "
        "'small', 'tiny')"]


def poison_losses(monkeypatch, bad_steps):
    """Make the pre-trainer's loss NaN in the training forwards of ``bad_steps`` (1-based; one micro-batch each)."""
    from electra_fast.pretrainer import ElectraPretrainer

    forward = ElectraPretrainer.forward
    calls = []

    def poisoned(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        if not self.training:
            return out  # held-out evaluation
        calls.append(None)
        return dataclasses.replace(out, loss=out.loss * float("nan")) if len(calls) in bad_steps else out

    monkeypatch.setattr(ElectraPretrainer, "forward", poisoned)


def test_a_non_finite_loss_skips_the_step(tmp_path, tokenizer_dir, monkeypatch):
    poison_losses(monkeypatch, {3})
    from electra_fast.pretrainer import ElectraPretrainer

    models, snapshots = [], {}
    init = ElectraPretrainer.__init__

    def keep_model(self, *args, **kwargs):  # to look at the weights after each step
        init(self, *args, **kwargs)
        models.append(self)

    def remember(step):
        snapshots[step] = {name: p.detach().clone() for name, p in models[0].named_parameters()}

    monkeypatch.setattr(ElectraPretrainer, "__init__", keep_model)
    config = small_config(tmp_path / "run", tokenizer_dir, grad_accum=1, steps=5, eval_fraction=0)
    with use_backend("reference"):
        result = pretrain(config, after_step=remember, log=lambda message: None)
    assert not result.interrupted and result.steps_done == 5
    rows = read_metrics(tmp_path / "run")
    assert [row["skipped"] for row in rows] == [False, False, True, False, False]
    assert rows[2]["loss"] != rows[2]["loss"]  # NaN, logged as it was
    unchanged = all(torch.equal(snapshots[2][name], snapshots[3][name]) for name in snapshots[2])
    moved = any(not torch.equal(snapshots[3][name], snapshots[4][name]) for name in snapshots[3])
    assert unchanged and moved  # the bad step did not update the weights; the next one did
    assert "1 steps were skipped" in (tmp_path / "run" / "summary.txt").read_text()


def test_consecutive_bad_steps_stop_the_run_keeping_the_good_checkpoint(tmp_path, tokenizer_dir, monkeypatch, capsys):
    poison_losses(monkeypatch, set(range(3, 100)))
    # Skipped steps are counted when metrics are written (no device synchronisation per step): every step here.
    code, err = run_cli(capsys, "--tokenizer", str(tokenizer_dir), "--steps", "10", "--save-every", "2",
                        "--max-bad-steps", "3", "--log-every", "1", "--eval-fraction", "0",
                        "--output-dir", str(tmp_path / "run"))
    assert code == 3, err
    assert "stopped at step 5: 3 steps in a row had a non-finite loss or gradient" in err
    assert "the last good checkpoint is" in err and "step-0000002.pt" in err
    assert [p.name for p in sorted((tmp_path / "run" / "checkpoints").glob("*.pt"))] == ["step-0000002.pt"]
    assert [row["skipped"] for row in read_metrics(tmp_path / "run")] == [False, False, True, True, True]
    assert not (tmp_path / "run" / "discriminator").exists()


def test_a_damaged_checkpoint_is_named_and_resume_latest_falls_back(tmp_path, tokenizer_dir, capsys):
    output_dir = tmp_path / "run"
    with use_backend("reference"):
        pretrain(small_config(output_dir, tokenizer_dir, keep_checkpoints=3, eval_fraction=0), log=lambda m: None)
    newest = output_dir / "checkpoints" / "step-0000006.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a copy cut short
    with use_backend("reference"):
        messages = []
        result = pretrain(small_config(output_dir, tokenizer_dir, keep_checkpoints=3, eval_fraction=0, steps=8,
                                       resume="latest"), log=messages.append)
    assert not result.interrupted and result.steps_done == 8
    assert any(f"checkpoint {newest} cannot be loaded" in m and "trying an older checkpoint" in m for m in messages)
    assert any("resumed from" in m and "step-0000004.pt at step 4" in m for m in messages), messages
    assert [row["step"] for row in read_metrics(output_dir)] == list(range(1, 9))
    # A named checkpoint that does not load is an error naming it; so is a folder where none loads.
    (output_dir / "checkpoints" / "step-0000008.pt").write_bytes(b"garbage")
    code, err = run_cli(capsys, "--tokenizer", str(tokenizer_dir), "--output-dir", str(output_dir),
                        "--resume", str(output_dir / "checkpoints" / "step-0000008.pt"))
    assert code == 2 and "checkpoint" in err and "step-0000008.pt cannot be loaded" in err, err
    for path in (output_dir / "checkpoints").glob("*.pt"):
        path.write_bytes(b"")
    code, err = run_cli(capsys, "--tokenizer", str(tokenizer_dir), "--output-dir", str(output_dir), "--resume")
    assert code == 2 and "--resume latest: no checkpoint in" in err and "can be loaded" in err, err


def test_resume_alone_continues_a_moved_run_with_its_own_settings(tmp_path, default_run, capsys, monkeypatch):
    """A copied run folder, named by a relative path, resumes with no other flag: its settings, its tokenizer
    and its prepared data come from the folder; a checkpoint file names the folder it belongs to."""
    shutil.copytree(default_run, tmp_path / "moved")
    monkeypatch.chdir(tmp_path)
    code = cli.main(["pretrain", "--backend", "reference", "--resume", "--output-dir", "moved", "--steps", "5"])
    err = capsys.readouterr().err
    assert code == 0 and "at step 4" in err, err
    assert "training a WordPiece" not in err and "preparing the corpus" not in err, err
    code = cli.main(["pretrain", "--backend", "reference", "--resume", "moved/checkpoints/step-0000005.pt",
                     "--steps", "6"])
    err = capsys.readouterr().err
    assert code == 0 and "step-0000005.pt at step 5" in err, err
    assert [row["step"] for row in read_metrics(tmp_path / "moved")] == list(range(1, 7))
    assert not (tmp_path / "runs").exists()  # not the default --output-dir: the checkpoint's folder
    saved = torch.load(tmp_path / "moved" / "checkpoints" / "step-0000006.pt", weights_only=False)["config"]
    original = torch.load(default_run / "checkpoints" / "step-0000004.pt", weights_only=False)["config"]
    assert {key: saved[key] for key in ("batch_size", "max_length", "vocab_size", "eval_sequences")} == {
        "batch_size": 4, "max_length": 32, "vocab_size": 500, "eval_sequences": 16}
    changed = {"steps", "output_dir", "resume"}
    assert {key: value for key, value in saved.items() if key not in changed} == {
        key: value for key, value in original.items() if key not in changed}


def test_resume_compares_paths_resolved_and_lists_what_differs(tmp_path, tokenizer_dir, capsys, monkeypatch):
    (tmp_path / "corpus.txt").write_text("ELECTRA trains a discriminator.\nIt detects replaced tokens.\n\n" * 20)
    shutil.copytree(tokenizer_dir, tmp_path / "tok")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(capsys, "--data", "corpus.txt", "--tokenizer", "tok", "--eval-fraction", "0", "--steps", "2",
                        "--output-dir", "relrun")
    assert code == 0, err
    code, err = run_cli(capsys, "--data", str(tmp_path / "corpus.txt"), "--tokenizer", str(tmp_path / "tok"),
                        "--eval-fraction", "0", "--steps", "3", "--output-dir", str(tmp_path / "relrun"), "--resume")
    assert code == 0 and "at step 2" in err, err
    monkeypatch.chdir(tmp_path / "elsewhere")  # the relative --data and --tokenizer of the first command
    code, err = run_cli(capsys, "--output-dir", "../relrun", "--resume", "--steps", "4")
    assert code == 0 and "at step 3" in err, err
    code, err = run_cli(capsys, "--output-dir", "../relrun", "--resume", "--steps", "5", "--lr", "0.1",
                        "--data", "corpus.txt", "--eval-every", "1")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert re.search(r"differ from the checkpoint's: --data '.*/corpus.txt' -> 'corpus.txt'; --lr None -> 0.1 "
                     r"\(a resumed run keeps its settings; only .*--eval-every.*--steps may change", err), err


def test_help_shows_each_default_once(capsys):
    with pytest.raises(SystemExit):
        cli.main(["pretrain", "--help"])
    text = capsys.readouterr().out
    entries = re.split(r"\n  (?=-)", text.split("options:", 1)[1])
    entries = [entry.split("\n\n")[0] for entry in entries]  # without the next group's heading
    options = {entry.split()[0]: " ".join(entry.split()) for entry in entries if entry.strip().startswith("--")}
    assert len(options) > 30
    for name, entry in options.items():
        assert entry.count("default") <= 1, entry
    assert "(default: 300)" in options["--steps"] and "(default: 0)" in options["--seed"]
    assert "(default: tiny)" in options["--preset"] and "(default: 0.05)" in options["--eval-fraction"]
    assert "a fifth of --steps" in options["--save-every"]


def test_every_objective_field_has_its_flag_with_the_real_default(capsys):
    """ElectraObjective is the one table of the objective's settings: each field has a --flag (or says why not),
    a PretrainConfig setting that is None until passed, and a help that shows the default a run really gets."""
    from electra_fast.objective import ElectraObjective
    from electra_fast.presets import get_preset
    from electra_fast.pretrainer import ElectraPretrainer
    from electra_fast.run_config import OBJECTIVE_FIELDS

    with pytest.raises(SystemExit):
        cli.main(["pretrain", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    parsed = cli.build_parser().parse_args(["pretrain"])
    config_defaults = {field.name: field.default for field in dataclasses.fields(PretrainConfig)}
    model = ElectraPretrainer.from_preset("tiny", vocab_size=64, mask_token_id=3, hidden_size=32, embedding_size=32,
                                          num_layers=1, num_heads=1, generator_hidden_size=64,
                                          **{name: getattr(PretrainConfig(), name) for name in OBJECTIVE_FIELDS
                                             if getattr(PretrainConfig(), name) is not None})
    flagged = []
    for field in dataclasses.fields(ElectraObjective):
        if not field.metadata["flag"]:
            assert field.metadata["no_flag_because"], field.name
            assert field.name not in config_defaults, field.name
            continue
        flagged.append(field.name)
        flag = f"--{field.name.replace('_', '-')}"
        assert config_defaults[field.name] is None and getattr(parsed, field.name) is None, field.name
        assert re.search(rf"{flag}\b.*?\(default: {re.escape(field.metadata['shown'])}[;)]", help_text), flag
        # The model built from no flags has the field's default; the help shows it as it is, or in words
        # only where it is None or a switch.
        assert getattr(model.objective, field.name) == field.default, field.name
        assert field.metadata["shown"] == str(field.default) or field.default in (None, False), field.name
    assert tuple(flagged) == OBJECTIVE_FIELDS and "mask_prob" in flagged and "generator_head" not in flagged
    assert get_preset("tiny").mask_prob == ElectraObjective.mask_prob  # so the check above holds for mask_prob
    assert "0.25 for large" in help_text  # a preset's own value, from presets.py


def test_save_every_defaults_to_saving_during_a_readme_sized_run():
    from electra_fast.run_config import save_interval

    assert save_interval(PretrainConfig(steps=300)) == 60  # the README's command saves at 60, 120, ... 300
    assert save_interval(PretrainConfig(steps=1_000_000)) == 1000
    assert save_interval(PretrainConfig(steps=3)) == 1
    assert save_interval(PretrainConfig(steps=300, save_every=7)) == 7


def test_the_command_bounds_how_long_waiting_openmp_threads_spin():
    """Spinning OpenMP threads take a shared CPU from the threads that have work (benchmarks/bench_shared_cpu.py):
    importing electra_fast before torch (the command does) lets them spin 3,000 times, then sleep, unless a
    wait policy or spin count of the user's is set."""
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}

    def spin_count(code, **extra):
        return subprocess.run([sys.executable, "-c", code + "; import os; print(os.environ.get('GOMP_SPINCOUNT'))"],
                              env={**env, **extra}, capture_output=True, text=True, check=True).stdout.strip()

    assert spin_count("import electra_fast") == "3000"
    assert spin_count("import electra_fast", GOMP_SPINCOUNT="50") == "50"
    assert spin_count("import electra_fast", OMP_WAIT_POLICY="PASSIVE") == "None"  # the user's policy decides
    assert spin_count("import torch, electra_fast") == "None"  # too late to matter: nothing is changed
