"""Ahead-of-time compile every registered kernel configuration for sm_80 and sm_90a as the JIT would, without a GPU.

Each configuration is compiled with the specialisation Triton's JIT binder computes for the launch it stands for
(kernels/registry.py: launches captured from the launchers on representative inputs get the binder's own
``tt.divisibility`` attributes and constant ints; signature-only registrations get 16-byte aligned pointers), then
its SASS is read (``cuobjdump``): registers, spill bytes, shared memory, HGMMA (wgmma) and HMMA instructions,
asynchronous copies (LDGSTS, or UTMALDG for TMA; inside loops only the 16-byte ones that move a tile count) and
local-memory traffic (LDL/STL), HGMMA also counted inside loops (a backward branch's range).
``python -m electra_fast.aot`` prints a table (``--json PATH`` keeps the rows) and exits 1 on a compile error, a
spill, shared memory over the architecture's limit or a missed expectation (``expect=`` where the kernel
registers: "wgmma" on sm_90a for 16-bit inputs, "async_copy"). It must run with TRITON_INTERPRET unset (the
interpreter replaces the JIT functions that get compiled here).
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

from .backend import interpreter_enabled

CAPABILITIES = {"sm_80": 80, "sm_90": 90}  # the registry's architectures, compiled for sm_80 and sm_90a
# Shared memory one block may use (cudaDevAttrMaxSharedMemoryPerBlockOptin): A100 163 KB, H100 227 KB.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
SIXTEEN_BIT = ("*fp16", "*bf16")
ASYNC_COPIES = ("LDGSTS", "UTMALDG", "UBLKCP")


def _wide_async(mnemonic: str) -> bool:
    """An asynchronous copy that moves a tile: a 16-byte LDGSTS (cp.async of 8 fp16/bf16) or a TMA/bulk copy.
    Without the JIT's alignment K/V come as 2-byte LDG.E.U16 and only the fp32 bias gets a 4-byte LDGSTS."""
    opcode = mnemonic.split(".")[0]
    return opcode in ("UTMALDG", "UBLKCP") or (opcode == "LDGSTS" and ".128" in mnemonic)


def arch_name(capability: int) -> str:
    return f"sm_{capability}{'a' if capability == 90 else ''}"


def _kernel_modules():
    """Import every module of electra_fast.kernels so that each registers its launch configurations."""
    import pkgutil

    from electra_fast import kernels

    return [importlib.import_module(f"electra_fast.kernels.{module.name}")
            for module in pkgutil.iter_modules(kernels.__path__)]


def load_configs():
    """Every registered configuration: the signature-only registrations, then the captured launches."""
    from triton.runtime.jit import JITFunction

    from electra_fast.kernels import registry

    modules = _kernel_modules()
    jit_functions = list({id(obj): obj for module in modules for obj in vars(module).values()
                          if isinstance(obj, JITFunction)}.values())
    return list(registry.CONFIGS) + registry.capture_launches(jit_functions)


def specialise(config, capability: int):
    """(signature, constexprs, attrs, options) the JIT would compile ``config``'s launch with on ``capability``:
    Triton's own binder and ``_pack_args`` (both 3.6 and 3.9 keep these), fed the captured arguments."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = config.kernel
    backend = make_backend(GPUTarget("cuda", capability, 32))
    launch_options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    if config.args is not None:
        binder = create_function_from_signature(kernel.signature, kernel.params, backend)
        bound_args, specialization, options = binder(**config.args, **launch_options)
    else:  # signature only: what every launch satisfies, pointers 16-byte aligned, no integer specialised
        bound_args = {name: config.constexprs.get(name) for name in kernel.arg_names}
        specialization = [("constexpr", config.constexprs[name]) if name in config.constexprs
                          else (config.signature[name], "D" if config.signature[name].startswith("*") else "")
                          for name in kernel.arg_names]
        options = launch_options
    return kernel._pack_args(backend, launch_options, bound_args, specialization, options)


def specialisation_summary(kernel, signature: dict, attrs: dict) -> dict:
    """Argument names with divisibility 16, and those the JIT made constants (ints equal to 1)."""
    names = kernel.arg_names
    divisible = [names[path[0]] for path, values in attrs.items() if ["tt.divisibility", 16] in map(list, values)]
    constants = [name for name, kind in signature.items() if kind == "constexpr"
                 and not kernel.params[names.index(name)].is_constexpr]
    return {"divisible": divisible, "constants": constants}


def _cuobjdump(cubin: bytes, flag: str) -> str:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        return subprocess.run([tool, flag, handle.name], capture_output=True, text=True, check=True).stdout


# "/*0a70*/  @!P0 BRA 0x5a0 ;": address, mnemonic with its modifiers (predicate skipped), and a branch's
# target when there is one.
_INSTRUCTION = re.compile(
    r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)[^;]*?(?:\s(0x[0-9a-f]+))?\s*;")


def sass_facts(sass: str) -> dict:
    """Counts of the instructions this check cares about, in the whole kernel and inside loops. A loop is the
    address range from a backward branch's target to the branch."""
    instructions = [(int(address, 16), mnemonic, int(target, 16) if target else None)
                    for address, mnemonic, target in _INSTRUCTION.findall(sass)]
    loops = [(target, address) for address, mnemonic, target in instructions
             if mnemonic.split(".")[0] in ("BRA", "JMP") and target is not None and target <= address]

    def count(matches, in_loop=False):
        return sum(matches(mnemonic) and (not in_loop or any(lo <= address <= hi for lo, hi in loops))
                   for address, mnemonic, _ in instructions)

    def opcode(*names):
        return lambda mnemonic: mnemonic.split(".")[0] in names

    return {"hgmma": count(opcode("HGMMA")), "hgmma_in_loop": count(opcode("HGMMA"), True),
            "hmma": count(opcode("HMMA")), "async_copies": count(opcode(*ASYNC_COPIES)),
            "async_copies_in_loop": count(_wide_async, True), "local_loads": count(opcode("LDL")),
            "local_stores": count(opcode("STL")), "loops": len(loops)}


def _resources(cubin: bytes) -> tuple[int, int]:
    """Registers and local-memory (spill) bytes of a cubin, from cuobjdump's resource usage."""
    text = _cuobjdump(cubin, "-res-usage")
    registers = int(re.search(r"REG:(\d+)", text).group(1))
    # Spilled registers live in local memory (the stack frame): any LOCAL or STACK bytes count as spills.
    local = sum(int(x) for x in re.findall(r"(?:LOCAL|STACK):(\d+)", text))
    return registers, local


def check(row: dict) -> list[str]:
    """What is wrong with a compiled row (empty: nothing)."""
    if "error" in row:
        return [row["error"]]
    problems = []
    if row["spills"]:
        problems.append(f"{row['spills']} bytes spilled")
    if row["shared_bytes"] > SHARED_LIMIT[row["capability"]]:
        problems.append(f"{row['shared_bytes']} bytes of shared memory > {SHARED_LIMIT[row['capability']]}")
    if "wgmma" in row["expect"] and row["capability"] == 90 and row["sixteen_bit"] and not row["hgmma_in_loop"]:
        problems.append("no HGMMA (wgmma) in a loop on sm_90a")
    if "async_copy" in row["expect"] and not row["async_copies_in_loop"]:
        problems.append("no 16-byte asynchronous copy (LDGSTS.128/TMA) in a loop")
    return problems


def compile_config(config, capability: int, specialised=None) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    options, signature, constexprs, attrs = specialised or specialise(config, capability)
    source = ASTSource(fn=config.kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options.__dict__)
    cubin = compiled.asm["cubin"]
    registers, spills = _resources(cubin)
    row = {"kernel": config.name, "arch": arch_name(capability), "capability": capability, "registers": registers,
           "spills": spills, "shared_bytes": compiled.metadata.shared, "expect": list(config.expect),
           "sixteen_bit": any(t in SIXTEEN_BIT for t in config.signature.values()),
           **sass_facts(_cuobjdump(cubin, "-sass")),
           "specialisation": specialisation_summary(config.kernel, signature, attrs)}
    row["problems"] = check(row)
    return row


def _compile_job(index) -> dict:
    config, capability, specialised = JOBS[index]
    try:
        return compile_config(config, capability, specialised)
    except Exception as error:  # report every failure, not only the first
        row = {"kernel": config.name, "arch": arch_name(capability), "capability": capability,
               "error": f"{type(error).__name__}: {error}"}
        row["problems"] = check(row)
        return row


JOBS: list = []  # (config, capability, specialisation) filled before the workers fork


def jobs_for(configs, only: str = "") -> list:
    """One job per distinct binary: launches that specialise alike on an architecture compile once."""
    jobs, seen = [], set()
    for config in configs:
        if only not in config.name:
            continue
        for arch in config.archs:
            capability = CAPABILITIES[arch]
            specialised = specialise(config, capability)
            options, signature, constexprs, attrs = specialised
            key = (config.name, capability, repr(sorted(signature.items())), repr(sorted(constexprs.items())),
                   repr(sorted(attrs.items())), repr(sorted(options.__dict__.items())))
            if key not in seen:
                seen.add(key)
                jobs.append((config, capability, specialised))
    return jobs


def compile_all(jobs) -> list[dict]:
    """Compile ``jobs`` (see ``jobs_for``) in one forked process per core; rows in the jobs' order."""
    JOBS[:] = jobs
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(_compile_job, range(len(jobs))))


def format_table(rows) -> str:
    header = ("kernel", "arch", "regs", "spill", "smem KB", "HGMMA loop/all", "HMMA", "async 16B loop/all", "LDL/STL",
              "div16 / const")
    lines = [header]
    for row in rows:
        if "error" in row:
            lines.append((row["kernel"], row["arch"], "error", "", "", "", "", "", "", ""))
            continue
        spec = row["specialisation"]
        lines.append((row["kernel"], row["arch"], str(row["registers"]), str(row["spills"]),
                      f"{row['shared_bytes'] / 1024:.1f}", f"{row['hgmma_in_loop']}/{row['hgmma']}", str(row["hmma"]),
                      f"{row['async_copies_in_loop']}/{row['async_copies']}",
                      f"{row['local_loads']}/{row['local_stores']}",
                      f"{len(spec['divisible'])} / {','.join(spec['constants']) or '-'}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    for row in rows:
        for problem in row["problems"]:
            text.append(f"FAIL {row['kernel']} {row['arch']}: {problem}")
    return "\n".join(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--only", default="", help="compile only configurations whose name contains this")
    args = parser.parse_args(argv)
    if interpreter_enabled():
        print("unset TRITON_INTERPRET to compile kernels", file=sys.stderr)
        return 2
    import triton

    rows = [{**row, "triton": triton.__version__} for row in compile_all(jobs_for(load_configs(), args.only))]
    print(f"Triton {triton.__version__}: {len(rows)} binaries")
    print(format_table(rows), flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)
    return 1 if any(row["problems"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
