"""Ahead-of-time compile every registered kernel configuration for sm_80 and sm_90a, without a GPU.

``python -m electra_fast.aot`` prints one line per (configuration, architecture) with registers, spills and
shared memory, and a JSON report with ``--json PATH``; it exits 1 on a compile error or a spill. It must
run with TRITON_INTERPRET unset (the interpreter replaces the JIT functions that get compiled here).
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor

from .backend import interpreter_enabled

ARCHITECTURES = (80, 90)


def _load_configs():
    """Import every module of electra_fast.kernels so that each registers its launch configurations."""
    import pkgutil

    from electra_fast import kernels
    from electra_fast.kernels import registry

    for module in pkgutil.iter_modules(kernels.__path__):
        importlib.import_module(f"electra_fast.kernels.{module.name}")
    return registry.CONFIGS


def compile_config(config, capability: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = config.kernel
    signature = dict(config.signature)
    for name in config.constexprs:
        signature[name] = "constexpr"
    constexprs = {(kernel.arg_names.index(name),): value for name, value in config.constexprs.items()}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    compiled = triton.compile(
        source,
        target=GPUTarget("cuda", capability, 32),
        options={"num_warps": config.num_warps, "num_stages": config.num_stages},
    )
    metadata = compiled.metadata
    n_regs = getattr(compiled, "n_regs", None)
    n_spills = getattr(compiled, "n_spills", None)
    if n_regs is None:  # without a GPU the driver does not fill these in: read them from the cubin
        n_regs, n_spills = _cubin_resources(compiled.asm["cubin"], capability)
    return {"kernel": config.name, "arch": f"sm_{capability}{'a' if capability == 90 else ''}", "registers": n_regs,
            "spills": n_spills, "shared_bytes": metadata.shared}


def _cubin_resources(cubin: bytes, capability: int) -> tuple[int, int]:
    """Registers and local-memory (spill) bytes of a cubin, from cuobjdump's resource usage."""
    import re
    import subprocess
    import tempfile

    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        text = subprocess.run([tool, "-res-usage", handle.name], capture_output=True, text=True, check=True).stdout
    registers = int(re.search(r"REG:(\d+)", text).group(1))
    # Spilled registers live in local memory (the stack frame): any LOCAL or STACK bytes count as spills.
    local = sum(int(x) for x in re.findall(r"(?:LOCAL|STACK):(\d+)", text))
    return registers, local


def _compile_job(job) -> dict:
    index, capability = job
    config = _load_configs()[index]
    try:
        return compile_config(config, capability)
    except Exception as error:  # report every failure, not only the first
        return {"kernel": config.name, "arch": f"sm_{capability}", "error": f"{type(error).__name__}: {error}"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--only", default="", help="compile only configurations whose name contains this")
    args = parser.parse_args(argv)
    if interpreter_enabled():
        print("unset TRITON_INTERPRET to compile kernels", file=sys.stderr)
        return 2
    configs = _load_configs()
    jobs = [(index, capability) for index, config in enumerate(configs) if args.only in config.name
            for capability in ARCHITECTURES]
    # Compiles are independent and CPU-bound: one process per core (forked, so each has the registry).
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1, mp_context=multiprocessing.get_context("fork")) as pool:
        rows = list(pool.map(_compile_job, jobs))
    failed = False
    for row in rows:
        failed |= "error" in row or bool(row["spills"])
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
