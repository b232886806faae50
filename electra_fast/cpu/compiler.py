"""Compile the CPU path's hot loops with inductor's C++ backend, or run them eagerly where that cannot work.

``compiled(fn)`` returns a callable with ``fn``'s results. On first use it compiles ``fn`` with
``torch.compile(dynamic=True)`` (one program for every shape); inductor keeps the generated code in its
on-disk cache (``TORCHINDUCTOR_CACHE_DIR``, by default under the system's temporary folder), so a second
process loads it instead of compiling again. If compiling fails (no C++ compiler, an unsupported platform)
it warns once and runs ``fn`` eagerly: the same results, only slower. ``ELECTRA_FAST_CPU_COMPILE=0``
chooses the eager version outright. The callers are custom ops, so an outer ``torch.compile`` never traces
these functions: it runs the ops, and they call the separately compiled loops.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

_fallback_warned = False
# Elements per call of a compiled loop that draws. Inductor stores a pointwise value to memory once its
# expression passes 50 ops on the CPU (inlining all ~150 ops of ten Philox rounds instead costs it minutes of
# code generation), so a draw leaves an int64 temporary of the call's size: callers feed these loops in
# chunks of this many elements, whose temporaries stay in the cache (2 MiB) instead of costing [M, V] memory.
CHUNK_ELEMENTS = 1 << 18


def compile_enabled() -> bool:
    return os.environ.get("ELECTRA_FAST_CPU_COMPILE", "1").strip() not in ("0", "false", "no", "off")


def _warn_fallback(name: str, error: BaseException) -> None:
    global _fallback_warned
    if not _fallback_warned:
        _fallback_warned = True
        warnings.warn(
            f"electra-fast: compiling the CPU path ({name}) failed, so it runs eagerly (same results, slower). "
            f"Install a C++ compiler (e.g. gcc) to make it fast. The error was: {type(error).__name__}: {error}",
            RuntimeWarning,
            stacklevel=3,
        )


class _Compiled:
    def __init__(self, fn):
        self.fn = fn
        self.compiled_fn = None
        self.failed = False
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        if self.failed or not compile_enabled():
            return self.fn(*args, **kwargs)
        # The compiled loops compute values only (their callers own the autograd): compile them without it.
        args = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
        with torch.no_grad():
            return self._call_compiled(*args, **kwargs)

    def _call_compiled(self, *args, **kwargs):
        if self.compiled_fn is None:
            try:  # compiling happens in the first call: any failure there is the compiler's
                self.compiled_fn = torch.compile(self.fn, dynamic=True, fullgraph=True)
                return self.compiled_fn(*args, **kwargs)
            except Exception as error:
                self.failed = True
                _warn_fallback(self.fn.__name__, error)
                return self.fn(*args, **kwargs)
        return self.compiled_fn(*args, **kwargs)


def compiled(fn):
    """``fn`` compiled for the CPU on first use, or ``fn`` itself where compiling fails (see the module doc)."""
    return _Compiled(fn)
