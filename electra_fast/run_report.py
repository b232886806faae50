"""What ``electra-fast pretrain`` leaves for a person to read: ``loss.png`` and the summary.

``metrics.jsonl`` holds two kinds of rows: one per training step (``loss``, ``mlm_loss``, ... and
``skipped`` for a step with a non-finite loss or gradient) and one per evaluation (``eval_*`` fields, see
electra_fast/evaluation.py; step 0 is the untrained model).
"""

from __future__ import annotations

import math
from pathlib import Path


def training_rows(metrics: list) -> list:
    return [row for row in metrics if "loss" in row]


def evaluation_rows(metrics: list) -> list:
    return [row for row in metrics if "eval_rtd_auc" in row]


def window_mean(rows: list, key: str, first: bool) -> float:
    """Mean of the finite ``key`` values over the first (or last) tenth of the rows, at least one row."""
    width = max(1, len(rows) // 10)
    values = [row[key] for row in (rows[:width] if first else rows[-width:])]
    finite = [value for value in values if value is not None and math.isfinite(value)]
    return sum(finite) / len(finite) if finite else float("nan")


def smoothed(values: list, width: int) -> list:
    out = []
    for index in range(len(values)):
        window = [v for v in values[max(0, index - width + 1): index + 1] if math.isfinite(v)]
        out.append(sum(window) / len(window) if window else float("nan"))
    return out


def plot_losses(metrics: list, path: Path) -> None:
    """``loss_figure(metrics)`` as a PNG."""
    import matplotlib.pyplot as plt

    figure = loss_figure(metrics)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def loss_figure(metrics: list):
    """Loss, MLM and RTD curves (raw and smoothed), the two training accuracies and, when the run evaluated,
    the held-out panel (discriminator ROC AUC on both probes, generator MLM accuracy, the 0.5 of chance)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, evaluations = training_rows(metrics), evaluation_rows(metrics)
    steps = [row["step"] for row in rows]
    panels = [("loss", "total loss", "gen_weight x MLM + disc_weight x RTD"),
              ("mlm_loss", "generator MLM loss", "cross-entropy (nats)"),
              ("rtd_loss", "discriminator RTD loss", "binary cross-entropy (nats)"),
              ("accuracy", "training accuracy", "fraction correct")]
    panels += [("eval", "held-out", "ROC AUC / accuracy")] if evaluations else []
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    width = max(1, len(rows) // 30)
    for axis, (key, title, unit) in zip(axes, panels):
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.set_ylabel(unit)
        if key == "eval":
            eval_steps = [row["step"] for row in evaluations]
            for name, label in (("eval_rtd_auc", "RTD AUC, generator's replacements"),
                                ("eval_random_auc", "RTD AUC, random replacements"),
                                ("eval_mlm_accuracy", "generator MLM accuracy")):
                values = [math.nan if row[name] is None else row[name] for row in evaluations]
                axis.plot(eval_steps, values, marker="o", label=label)
            axis.axhline(0.5, color="gray", linewidth=0.8, linestyle=":", label="AUC 0.5: chance")
            axis.set_ylim(0, 1)
            axis.legend(fontsize=7)
            continue
        for name in (["generator_accuracy", "discriminator_accuracy"] if key == "accuracy" else [key]):
            values = [row[name] for row in rows]
            line, = axis.plot(steps, smoothed(values, width), label=name.replace("_", " "))
            axis.plot(steps, values, color=line.get_color(), alpha=0.25, linewidth=0.8)
        if key == "accuracy":
            axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def evaluation_summary(metrics: list, sequences: int) -> str:
    """One sentence: the held-out metrics of the untrained model (step 0) and of the last evaluation."""
    evaluations = evaluation_rows(metrics)
    if not evaluations:
        return ""
    first, last = evaluations[0], evaluations[-1]

    def change(key: str, digits: int = 3) -> str:
        def shown(value):
            return "n/a" if value is None else f"{value:.{digits}f}"

        return f"{shown(first[key])} -> {shown(last[key])}"

    return (
        f"On {sequences} held-out sequences, from step {first['step']} to step {last['step']}: the discriminator "
        f"detects the generator's replacements with ROC AUC {change('eval_rtd_auc')} (balanced accuracy "
        f"{change('eval_rtd_balanced_accuracy')}) and uniformly random ones with ROC AUC "
        f"{change('eval_random_auc')} (balanced accuracy {change('eval_random_balanced_accuracy')}; 0.5 is "
        f"chance); the generator's MLM accuracy went {change('eval_mlm_accuracy')}, its loss "
        f"{change('eval_mlm_loss')}. "
    )


def summarize(*, preset: str, sequences_per_step: int, max_length: int, generator_parameters: int,
              discriminator_parameters: int, metrics: list, placement: str, precision: str, output_dir: Path,
              metrics_file: str, eval_sequences: int) -> str:
    rows = training_rows(metrics)
    tokens = sum(row["tokens"] for row in rows)
    throughput = sorted(row["tokens_per_second"] for row in rows)
    skipped = sum(1 for row in rows if row.get("skipped"))

    def change(key: str) -> str:
        return f"{window_mean(rows, key, True):.3f} -> {window_mean(rows, key, False):.3f}"

    skipped_note = f"{skipped} steps were skipped for a non-finite loss or gradient. " if skipped else ""
    return (
        f"Pre-trained ELECTRA-{preset} (discriminator {discriminator_parameters / 1e6:.2f} M parameters, "
        f"generator {generator_parameters / 1e6:.2f} M, embeddings shared) for {len(rows)} steps of "
        f"{sequences_per_step} sequences x {max_length} tokens ({tokens / 1e6:.2f} M real tokens, "
        f"{tokens / max(1, len(rows) * sequences_per_step * max_length):.1%} of the slots) on {placement} "
        f"in {precision} at about {throughput[len(throughput) // 2]:,.0f} tokens/s. "
        f"Loss (mean of the first and last tenth of the steps) went {change('loss')}: generator MLM "
        f"{change('mlm_loss')}, discriminator RTD {change('rtd_loss')}; generator accuracy "
        f"{change('generator_accuracy')}, discriminator accuracy {change('discriminator_accuracy')}. "
        f"{skipped_note}{evaluation_summary(metrics, eval_sequences)}"
        f"The discriminator (for fine-tuning) is in {output_dir / 'discriminator'}, the generator in "
        f"{output_dir / 'generator'}, metrics in {output_dir / metrics_file}, curves in {output_dir / 'loss.png'}."
    )

