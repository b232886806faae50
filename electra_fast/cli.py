"""The ``electra-fast`` command line: ``info`` (versions, devices, usable backends) and sub-commands that
other modules add (``pretrain``, ``bench``, ``parity``)."""

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
    lines.append("Triton kernels run on: " + (", ".join(kernel_devices) or "nothing here (reference PyTorch ops are used)"))
    print("\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="electra-fast", description="Fast ELECTRA pre-training with Triton kernels.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="print versions, devices and which backends are usable").set_defaults(handler=info)
    from . import bench, parity

    parity.add_parser(commands)
    bench.add_parser(commands)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.raw_argv = argv[1:]  # the sub-command's own arguments, for commands that re-run themselves
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
