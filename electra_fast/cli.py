"""The ``electra-fast`` command line: ``info`` (versions, devices, usable backends) and sub-commands that
other modules add (``pretrain``, ``bench``, ``parity``, ``inspect``)."""

from __future__ import annotations

import argparse
import sys


def info(args) -> int:
    import platform

    import torch

    from . import __version__
    from .backend import interpreter_enabled, requested_backend, triton_importable

    lines = [f"electra-fast {__version__}", f"python {platform.python_version()}", f"torch {torch.__version__}"]
    try:
        import triton

        lines.append(f"triton {triton.__version__}")
    except ImportError:
        lines.append("triton not installed")
    import transformers

    lines.append(f"transformers {transformers.__version__}")
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            lines.append(f"cuda:{index} {torch.cuda.get_device_name(index)}")
    else:
        lines.append("no CUDA device")
    kernel_devices = []
    if triton_importable() and torch.cuda.is_available():
        kernel_devices.append("cuda (compiled)")
    if triton_importable() and interpreter_enabled():
        kernel_devices.append("cpu (Triton interpreter)")
    lines.append(f"backend requested: {requested_backend()}")
    lines.append("Triton kernels run on: " + (", ".join(kernel_devices) or "nothing here"))
    if not interpreter_enabled() and requested_backend() == "auto":
        from .cpu.compiler import compile_enabled

        how = ("loops compiled by torch.compile (inductor, C++) on first use" if compile_enabled()
               else "eager (ELECTRA_FAST_CPU_COMPILE=0)")
        lines.append(f"CPU tensors: the CPU path (electra_fast.cpu), {how}")
    print("\n".join(lines))
    return 0


class DefaultsOnceFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help unless the help already states its default in words (or
    there is none to show), so every default appears exactly once."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or any(action.default is nothing for nothing in (None, False, argparse.SUPPRESS)):
            return text
        return f"{text} (default: %(default)s)".lstrip()


class ShortUsageParser(argparse.ArgumentParser):
    """A sub-command whose usage would take several lines (pretrain's lists 50 flags) shows a short one with its
    errors; --help still shows everything."""

    def format_usage(self) -> str:
        usage = super().format_usage()
        if usage.count("\n") <= 2:
            return usage
        positionals = "".join(f" {action.metavar or action.dest}" for action in self._actions
                              if not action.option_strings)
        return f"usage: {self.prog} [options]{positionals} (--help lists them)\n"


def add_pretrain_command(commands) -> None:
    from .presets import PRESETS
    from .run_config import PRECISIONS, PretrainConfig

    defaults = PretrainConfig()
    parser = commands.add_parser(
        "pretrain",
        help="pre-train an ELECTRA model (default: the tiny preset on the embedded corpus)",
        description="Pre-train ELECTRA (generator + discriminator) and save Hugging Face checkpoints. With no "
        "--data it trains on an embedded English corpus (Python's reference manual and standard-library "
        "docstrings) and a WordPiece tokenizer trained on it, so it needs no download. For data-parallel "
        "training over N GPUs (or N CPU processes) launch it as `torchrun --nproc_per_node=N -m electra_fast "
        "pretrain ...`: each process trains a DistributedDataParallel replica on every N-th batch of the same "
        "seeded stream (so a step sees N x --batch-size x --grad-accum sequences), metrics are averaged over "
        "the processes, and rank 0 alone writes metrics, checkpoints and models; --resume needs the same N.",
        formatter_class=DefaultsOnceFormatter,
    )
    parser.set_defaults(handler=pretrain)
    data = parser.add_argument_group("data and tokenizer")
    data.add_argument("--data", help="text file, JSONL file, directory of them, a datasets.save_to_disk directory "
                      "(prepared into OUTPUT_DIR/data first, reused while unchanged), or a directory written by "
                      "`electra-fast prepare-data` (default: the embedded corpus)")
    data.add_argument("--text-field", default=defaults.text_field, help="text field of JSONL records / dataset rows")
    data.add_argument("--tokenizer", help="local Hugging Face tokenizer directory or tokenizer.json (default: "
                      "train an uncased WordPiece tokenizer on the corpus, cached in OUTPUT_DIR/tokenizer)")
    data.add_argument("--vocab-size", type=int, help="vocabulary of the trained tokenizer (default: 4000 for tiny, "
                      "else 30522)")
    add_packing_arguments(data, defaults)
    data.add_argument("--data-workers", type=int, default=defaults.data_workers,
                      help="processes that build batches ahead of the step; 0 builds them in the training process, "
                      "which reading prepared rows makes the fastest (0.1-0.3 ms a batch; a worker adds about 1 ms "
                      "of transfer), and the step does not wait for the device, so the GPU stays busy meanwhile; "
                      "the batches are the same for any number")
    model = parser.add_argument_group("model (preset and size overrides)")
    model.add_argument("--preset", choices=sorted(PRESETS), default=defaults.preset,
                       help="model size (tiny is for CPUs and tests; small, base, large are the paper's)")
    for name in ("hidden-size", "embedding-size", "num-layers", "num-heads", "generator-hidden-size"):
        model.add_argument(f"--{name}", type=int, help="override the preset's value (default: the preset's)")
    add_objective_arguments(parser.add_argument_group("objective (defaults: the official ELECTRA values)"))
    training = parser.add_argument_group("training")
    training.add_argument("--steps", type=int, default=defaults.steps, help="optimiser steps")
    training.add_argument("--batch-size", type=int, default=defaults.batch_size, help="sequences per micro-batch")
    training.add_argument("--grad-accum", type=int, default=defaults.grad_accum,
                          help="micro-batches per optimiser step")
    training.add_argument("--lr", type=float, help="peak learning rate (default: the preset's)")
    training.add_argument("--warmup-steps", type=int, help="linear warm-up steps (default: 10%% of --steps)")
    training.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help="AdamW weight decay")
    training.add_argument("--max-grad-norm", type=float, default=defaults.max_grad_norm, help="gradient clipping")
    training.add_argument("--compile", action="store_true",
                          help="torch.compile the pre-trainer. Measured on a 2-core CPU (tiny, batch 16 x 128, "
                          "vocabulary 4000): about 75 s of compiling before the first step for about 2 %% less time "
                          "per step, so it pays only beyond about 40,000 steps there; the CPU path's loops are "
                          "compiled either way")
    training.add_argument("--device", default=defaults.device,
                          help="auto, cpu or cuda[:N] (under torchrun a CUDA run uses cuda:LOCAL_RANK)")
    training.add_argument("--precision", choices=PRECISIONS, default=defaults.precision,
                          help="auto = bf16 autocast on a GPU that has it, else fp32")
    training.add_argument("--backend", choices=("auto", "triton", "reference"), default="auto",
                          help="run the ops as Triton kernels or the PyTorch reference (auto: kernels where they run)")
    training.add_argument("--seed", type=int, default=defaults.seed,
                          help="seeds the data order, masks, samples, dropout and initial weights: the same seed "
                          "gives the same run")
    training.add_argument("--max-bad-steps", type=int, default=defaults.max_bad_steps,
                          help="a step whose loss or gradient is not finite is skipped (decided on the device); "
                          "this many in a row stop the run (exit code 3), keeping the checkpoints saved before; "
                          "counted when metrics are written (--log-every)")
    evaluation = parser.add_argument_group("evaluation on held-out documents")
    evaluation.add_argument("--eval-fraction", type=float, default=defaults.eval_fraction,
                            help="fraction of the documents held out from training (chosen by a hash of their "
                            "text; 0: no evaluation)")
    evaluation.add_argument("--eval-every", type=int, default=defaults.eval_every,
                            help="evaluate every N steps (and at step 0 and at the end): discriminator ROC AUC and "
                            "balanced accuracy on the generator's and on random replacements, generator MLM "
                            "accuracy and loss, as eval_* rows of metrics.jsonl")
    evaluation.add_argument("--eval-sequences", type=int, default=defaults.eval_sequences,
                            help="held-out sequences evaluated")
    run = parser.add_argument_group("output and checkpoints")
    run.add_argument("--output-dir", default=defaults.output_dir, help="where everything is written")
    run.add_argument("--save-every", type=int,
                     help="checkpoint every N steps (default: a fifth of --steps, at most 1000)")
    run.add_argument("--keep-checkpoints", type=int, default=defaults.keep_checkpoints, help="keep the last K")
    run.add_argument("--log-every", type=int, default=defaults.log_every,
                     help="write metrics every N steps (one device synchronisation each time)")
    run.add_argument("--resume", nargs="?", const="latest",
                     help="continue from the latest checkpoint in --output-dir that loads (a damaged newer one is "
                     "reported and skipped), or from the given file (its run folder unless --output-dir is given), "
                     "with the run's own settings: only --steps, --max-time, the intervals and operational flags "
                     "(--device, --data-workers, ...) may be passed with other values")
    run.add_argument("--overwrite", action="store_true", help="start over in an --output-dir that holds a run")
    run.add_argument("--max-time", help="wall-clock limit of the run, e.g. 3h30m, 45m or 90s, counted from its start "
                     "(the tokenizer, data preparation and compiling included; the few seconds Python takes to "
                     "start and import are not): then save a checkpoint and exit with code 124 (--resume continues); "
                     "SIGTERM and SIGUSR1 also save, exiting with 128 + the signal's number (before the first step "
                     "they stop at once, saying what was kept)")


def add_objective_arguments(group) -> None:
    """One flag per ElectraObjective field that has one, from the field's own description (electra_fast/objective.py):
    its help, its default as the help shows it (and the presets that differ from it), its type and choices. Not
    passed, a flag leaves None: the objective's (or the preset's) default."""
    from .objective import flag_fields, value_type
    from .presets import PRESETS

    for field in flag_fields():
        about = field.metadata
        shown = about["shown"] + "".join(f"; {getattr(preset, field.name)} for {name}"
                                         for name, preset in PRESETS.items()
                                         if getattr(preset, field.name, field.default) != field.default)
        help = f"{about['help']} (default: {shown})".replace("%", "%%")
        flag = f"--{field.name.replace('_', '-')}"
        if value_type(field) is bool:
            group.add_argument(flag, action="store_true", default=None, help=help)
        else:
            group.add_argument(flag, type=value_type(field), choices=about["choices"], help=help)


def add_packing_arguments(group, defaults, workers_flag: str = "--prepare-workers") -> None:
    """The flags that decide the prepared rows (shared by ``pretrain`` and ``prepare-data``)."""
    from .data import PACKINGS

    group.add_argument("--max-length", type=int, default=defaults.max_length, help="tokens per sequence")
    group.add_argument("--packing", choices=PACKINGS, default=defaults.packing,
                       help="full: every sequence filled across document boundaries, each segment starting at a "
                       "line; documents: the official packing, a document's end ends the sequence")
    group.add_argument(workers_flag, dest="prepare_workers", type=int,
                       help="processes that count the tokenizer's words and tokenize and pack the corpus (default: "
                       "the cores, at most 8; the output is the same for any number)")


def add_prepare_data_command(commands) -> None:
    from .run_config import PretrainConfig

    defaults = PretrainConfig()
    parser = commands.add_parser(
        "prepare-data", help="tokenize and pack a corpus into shards that pretrain --data reads directly",
        description="Tokenize and pack a corpus once, in parallel, into memory-mapped token shards (a held-out split "
        "included); `electra-fast pretrain --data OUTPUT` then trains from them with no tokenizing, and resumes by "
        "seeking. The output is the same for any number of --workers.", formatter_class=DefaultsOnceFormatter)
    parser.set_defaults(handler=prepare_data)
    parser.add_argument("output", help="directory to write (replaced if it holds prepared data)")
    parser.add_argument("--data", help="text file, JSONL file, directory of them, or a datasets.save_to_disk "
                        "directory (default: the embedded corpus)")
    parser.add_argument("--text-field", default=defaults.text_field, help="text field of JSONL records / dataset rows")
    parser.add_argument("--tokenizer", help="local Hugging Face tokenizer directory or tokenizer.json (default: "
                        "train an uncased WordPiece tokenizer on the corpus)")
    parser.add_argument("--vocab-size", type=int, default=30522, help="vocabulary of the trained tokenizer")
    add_packing_arguments(parser, defaults, workers_flag="--workers")
    parser.add_argument("--eval-fraction", type=float, default=defaults.eval_fraction,
                        help="fraction of the documents written to the held-out split (by a hash of their text)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the packing's random choices")


def prepare_data(args) -> int:
    from pathlib import Path

    from .data import open_corpus
    from .errors import UserInputError
    from .prepare_data import default_workers, prepare
    from .tokenizer import prepare_tokenizer

    output = Path(args.output).expanduser()
    workers = args.prepare_workers if args.prepare_workers is not None else default_workers()
    try:
        if workers < 0:
            raise UserInputError(f"--workers must be >= 0, got {workers}")
        corpus = open_corpus(args.data, args.text_field)
        tokenizer_cache = output.with_name(f"{output.name}.tokenizer")
        tokenizer = prepare_tokenizer(args.tokenizer, corpus, args.vocab_size, tokenizer_cache, workers,
                                      log=lambda message: print(message, file=sys.stderr))
        prepare(corpus, tokenizer, output, max_length=args.max_length, packing=args.packing,
                eval_fraction=args.eval_fraction, workers=workers, seed=args.seed,
                log=lambda message: print(message, file=sys.stderr))
    except UserInputError as error:
        print(f"electra-fast prepare-data: error: {error}", file=sys.stderr)
        return 2
    return 0


def pretrain(args) -> int:
    import dataclasses

    from .backend import use_backend
    from .errors import UserInputError
    from .run_config import PretrainConfig
    from .training import pretrain as run_pretraining

    config = PretrainConfig(**{field.name: getattr(args, field.name) for field in dataclasses.fields(PretrainConfig)})
    try:
        with use_backend(args.backend):
            result = run_pretraining(config, given=given_settings(args.raw_argv))
    except UserInputError as error:
        print(f"electra-fast pretrain: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before training started (the training loop saves a checkpoint on Ctrl-C itself)
        print("electra-fast pretrain: interrupted", file=sys.stderr)
        return 130
    if result.interrupted:  # saved; 128 + the signal's number, as a shell reports it, or 124 after --max-time
        return result.exit_code
    if result.summary:  # empty on the processes other than rank 0 under torchrun
        print(result.summary)
    return 0


def given_settings(argv: list) -> set:
    """The PretrainConfig settings that ``pretrain``'s arguments ``argv`` set explicitly (a resumed run takes the
    others from its checkpoint): argparse fills in a default only where the namespace has no value yet, so a
    second parse into a namespace holding a marker leaves the marker where no flag was given."""
    import dataclasses

    from .run_config import PretrainConfig

    commands = argparse.ArgumentParser().add_subparsers()
    add_pretrain_command(commands)
    unset = object()
    names = [field.name for field in dataclasses.fields(PretrainConfig)]
    parsed = commands.choices["pretrain"].parse_args(argv, namespace=argparse.Namespace(**dict.fromkeys(names, unset)))
    return {name for name in names if getattr(parsed, name) is not unset}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="electra-fast", description="Fast ELECTRA pre-training with Triton kernels.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ShortUsageParser)
    commands.add_parser("info", help="print versions, devices and which backends are usable").set_defaults(handler=info)
    add_pretrain_command(commands)
    add_prepare_data_command(commands)
    from . import bench, parity, tune
    from .workcount import report as workcount

    parity.add_parser(commands)
    bench.add_parser(commands)
    workcount.add_parser(commands)
    tune.add_parser(commands)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.raw_argv = argv[1:]  # the sub-command's own arguments, for commands that re-run themselves
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
