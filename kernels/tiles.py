"""The tile table: which launch configuration each kernel runs with on a GPU (docs/design.md §7.5).

``tile_table.json`` (beside this module) holds one entry per (kernel, architecture, key), where a kernel family
declares its key fields (attention: dtype, head-dim block, dropout) and its tile fields (attention: block_m,
block_n, num_warps, num_stages). Launchers call ``lookup``; the same inputs always get the same tiles, so results
stay bitwise reproducible. The table is written by ``python -m electra_fast.tune prune`` (CPU: AOT checks plus a
cost model) and rewritten by ``electra-fast tune`` (GPU timings); nothing tunes during training.

Architectures: entries exist for sm_80 and sm_90. A GPU of compute capability 9.x or 10.x uses sm_90's, every
other one sm_80's (its nearest older table architecture; sm_80's entries are pruned to 99 KB of shared memory
per block so that they also fit sm_86/89/12x). Under the interpreter launchers keep their own tiles.
"""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path

TABLE_PATH = Path(__file__).with_name("tile_table.json")
FORMAT = 1
ARCHS = ("sm_80", "sm_90")
DTYPES = ("fp32", "fp16", "bf16")


class TileTableError(ValueError):
    """The tile table file is malformed; the message names the file and the entry."""


def table_arch(capability: tuple[int, int]) -> str:
    """The table architecture a GPU of ``capability`` (major, minor) uses (module docstring)."""
    return "sm_90" if capability[0] in (9, 10) else "sm_80"


def _fail(path, message):
    raise TileTableError(f"{path}: {message}")


def parse(table: dict, path="tile table") -> dict:
    """Validate a decoded table; returns {kernel: (key field names, {(arch, *key values): {tile field: int}})}."""
    if not isinstance(table, dict) or table.get("format") != FORMAT:
        _fail(path, f"expected an object with \"format\": {FORMAT}")
    families, entries = table.get("kernels"), table.get("entries")
    if not isinstance(families, dict) or not isinstance(entries, list):
        _fail(path, "expected \"kernels\" (an object) and \"entries\" (a list)")
    for name, family in families.items():
        if not (isinstance(family, dict) and isinstance(family.get("key"), list)
                and isinstance(family.get("tiles"), list) and family["tiles"]):
            _fail(path, f"kernel {name!r} must declare \"key\" and \"tiles\" as lists of field names")
    parsed = {name: {} for name in families}
    for index, entry in enumerate(entries):
        where = f"entry {index}"
        if not isinstance(entry, dict) or entry.get("kernel") not in families:
            _fail(path, f"{where}: \"kernel\" must be one of {sorted(families)}")
        family = families[entry["kernel"]]
        fields = {"kernel", "arch", "source", *family["key"], *family["tiles"]}
        if set(entry) != fields:
            _fail(path, f"{where} ({entry['kernel']}): fields must be {sorted(fields)}, got {sorted(entry)}")
        if entry["arch"] not in ARCHS:
            _fail(path, f"{where}: arch must be one of {ARCHS}, got {entry['arch']!r}")
        if "dtype" in entry and entry["dtype"] not in DTYPES:
            _fail(path, f"{where}: dtype must be one of {DTYPES}, got {entry['dtype']!r}")
        tiles = {}
        for name in family["tiles"]:
            value = entry[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                _fail(path, f"{where}: {name} must be a positive integer, got {value!r}")
            if name.startswith("block") and value & (value - 1):
                _fail(path, f"{where}: {name} must be a power of two, got {value}")
            tiles[name] = value
        key = (entry["arch"], *(entry[name] for name in family["key"]))
        if key in parsed[entry["kernel"]]:
            _fail(path, f"{where}: a second entry for {entry['kernel']} {key}")
        parsed[entry["kernel"]][key] = tiles
    return {name: (tuple(families[name]["key"]), found) for name, found in parsed.items()}


def load(path=TABLE_PATH) -> dict:
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise TileTableError(f"{path}: cannot read the tile table ({error.strerror})") from error
    try:
        table = json.loads(text)
    except json.JSONDecodeError as error:
        raise TileTableError(f"{path}: not JSON ({error})") from error
    return parse(table, path)


@functools.cache
def _installed() -> dict:
    return load(TABLE_PATH)


_overrides: list = []  # {(kernel, arch, *key values): tiles} set by ``using`` (pruning and tuning only)


@contextlib.contextmanager
def using(entries: dict):
    """Within the block, ``lookup`` answers ``entries`` ({(kernel, arch, *key values): tiles}) before the table:
    how ``electra_fast.tune`` compiles or times a candidate through the launchers themselves."""
    _overrides.append(entries)
    try:
        yield
    finally:
        _overrides.pop()


def dumps(table: dict) -> str:
    """The table as JSON with one entry per line, in a fixed order (the file stays diffable)."""
    families = ",\n".join(f"  {json.dumps(name)}: {json.dumps(family)}" for name, family in table["kernels"].items())
    entries = sorted(table["entries"], key=lambda e: (e["kernel"], e["arch"], json.dumps(e, sort_keys=True)))
    lines = ",\n".join("  " + json.dumps(entry) for entry in entries)
    return (f"{{\n \"format\": {table['format']},\n \"kernels\": {{\n{families}\n }},\n"
            f" \"entries\": [\n{lines}\n ]\n}}\n")


def lookup(kernel: str, arch: str, **key) -> dict:
    """The tiles of ``kernel`` on ``arch`` for the key fields given by name, e.g.
    ``lookup("attention.forward", "sm_90", dtype="bf16", head_dim=64, dropout=False)``."""
    table = _installed()
    if kernel not in table:
        raise KeyError(f"the tile table has no kernel {kernel!r}")
    names, entries = table[kernel]
    if set(key) != set(names):
        raise TypeError(f"{kernel} is looked up by {names}, got {sorted(key)}")
    values = (arch, *(key[name] for name in names))
    for override in reversed(_overrides):
        if (kernel, *values) in override:
            return override[(kernel, *values)]
    try:
        return entries[values]
    except KeyError:
        raise KeyError(f"the tile table has no {kernel!r} entry for arch={arch}, {key}") from None
