"""The tile table (kernels/tiles.py, docs/design.md §7.5): complete, deterministic, strict about its format, and
only tuned on a GPU."""

import copy
import json
import re
import subprocess
import sys

import pytest
import torch

from electra_fast.kernels import attention, tiles


def test_every_attention_launch_a_gpu_can_make_has_one_entry():
    for kernel in attention.KERNELS:
        for arch in tiles.ARCHS:
            for dtype in attention.TABLE_DTYPES.values():
                for head_dim in attention.HEAD_DIM_BLOCKS:
                    for dropout in (False, True):
                        found = tiles.lookup(f"attention.{kernel}", arch, dtype=dtype, head_dim=head_dim,
                                             dropout=dropout)
                        assert set(found) == {"block_m", "block_n", "num_warps", "num_stages"}


def test_the_same_inputs_always_get_the_same_tiles():
    first = attention._tile_configs(torch.bfloat16, 64, True, "sm_90")
    assert tiles.load() == tiles.load()
    assert attention._tile_configs(torch.bfloat16, 64, True, "sm_90") == first
    # The interpreter keeps its own large tiles, whatever the table says.
    assert set(attention._tile_configs(torch.float32, 64, False, None).values()) == {attention.INTERPRETER_TILES}


def test_every_generator_head_launch_a_gpu_can_make_has_one_entry_read_by_its_launchers():
    """One entry per (architecture, dtype), E-independent; the 16-bit ones wgmma-shaped; tiles_for_gpu is the
    table's (an override through tiles.using reaches it)."""
    import dataclasses

    from electra_fast.kernels import generator_head

    for arch in tiles.ARCHS:
        for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16"), (torch.float32, "fp32")):
            found = generator_head.tiles_for_gpu(dtype, arch)
            assert dataclasses.asdict(found) == tiles.lookup("generator_head", arch, dtype=name)
            assert generator_head.has_wgmma(found, dtype) == (dtype != torch.float32)
    other = {**tiles.lookup("generator_head", "sm_90", dtype="bf16"), "num_stages": 4, "block_e": 64}
    with tiles.using({("generator_head", "sm_90", "bf16"): other}):
        assert dataclasses.asdict(generator_head.tiles_for_gpu(torch.bfloat16, "sm_90")) == other


def test_the_generator_head_entries_are_the_pruning_winners():
    """The table's 16-bit generator-head entries are the first-ranked surviving combination of their
    architecture (tile_candidates_generator_head.json, written with the table by tune prune-head)."""
    from electra_fast import tune_head

    found = json.loads(tune_head.candidates_path().read_text())
    for arch in tiles.ARCHS:
        ranked = sorted((c for c in found if c["arch"] == arch), key=tune_head._rank)
        assert ranked, arch
        for dtype in ("bf16", "fp16"):
            entry = tiles.lookup("generator_head", arch, dtype=dtype)
            assert entry == {k: ranked[0][k] for k in tune_head.TILE_FIELDS}


def test_the_generator_head_model_counts_the_accumulator_traffic():
    """8 * E bytes per owned row and logit tile: with everything else equal, a wider tile on the accumulator's
    other side (forward: vocabulary ids; backward: rows) models fewer cycles; the forward without gradients has
    no accumulator."""
    from electra_fast import tune_head

    row = dict(registers=128, shared_bytes=32 * 1024)
    base = dict(forward_block_m=64, forward_block_v=64, backward_block_m=64, backward_block_v=64, block_e=32,
                num_warps=4, num_stages=3)
    for name, side in (("forward_grad", "forward_block_v"), ("backward", "backward_block_m")):
        narrow = tune_head.model_cost(name, "sm_90", base, row)
        assert tune_head.model_cost(name, "sm_90", {**base, side: 128}, row) < narrow
    assert tune_head.model_cost("forward", "sm_90", base, row) < tune_head.model_cost("forward_grad", "sm_90", base,
                                                                                      row)


@pytest.mark.parametrize("capability, arch", [((8, 0), "sm_80"), ((8, 6), "sm_80"), ((8, 9), "sm_80"),
                                              ((9, 0), "sm_90"), ((10, 0), "sm_90"), ((12, 0), "sm_80"),
                                              ((7, 5), "sm_80")])
def test_other_architectures_use_the_documented_table_architecture(capability, arch):
    assert tiles.table_arch(capability) == arch


def test_the_installed_table_is_written_in_its_canonical_form():
    text = tiles.TABLE_PATH.read_text()
    assert tiles.dumps(json.loads(text)) == text


def test_sm80_entries_fit_the_smallest_shared_memory_they_serve():
    """sm_80's tiles also run on sm_86/89/12x (99 KB per block): the pruning record says what they used."""
    from electra_fast.tune import SHARED_CAP

    assert SHARED_CAP["sm_80"] == 99 * 1024
    candidates = json.loads(tiles.TABLE_PATH.with_name("tile_candidates.json").read_text())
    assert candidates and all(c["shared_bytes"] <= SHARED_CAP[c["arch"]] for c in candidates)
    assert all(c["spills"] == 0 and c["async_copies_in_loop"] > 0 for c in candidates)
    assert all(c["hgmma_in_loop"] > 0 for c in candidates if c["arch"] == "sm_90")


def _table():
    return json.loads(tiles.TABLE_PATH.read_text())


@pytest.mark.parametrize("damage, message", [
    (lambda t: t.update(format=2), '"format": 1'),
    (lambda t: t.pop("entries"), '"entries"'),
    (lambda t: t["entries"][0].update(kernel="attention.nothing"), "entry 0: \"kernel\" must be one of"),
    (lambda t: t["entries"][0].pop("num_stages"), "entry 0 (attention."),
    (lambda t: t["entries"][0].update(arch="sm_75"), "entry 0: arch must be one of"),
    (lambda t: t["entries"][0].update(dtype="fp8"), "entry 0: dtype must be one of"),
    (lambda t: t["entries"][0].update(num_warps=0), "entry 0: num_warps must be a positive integer"),
    (lambda t: t["entries"][0].update(block_m=96), "entry 0: block_m must be a power of two"),
    (lambda t: t["entries"].append(copy.deepcopy(t["entries"][0])), "a second entry for"),
])
def test_a_malformed_table_is_rejected_naming_the_problem(damage, message):
    table = _table()
    damage(table)
    with pytest.raises(tiles.TileTableError, match="the table: .*" + re.escape(message)):
        tiles.parse(table, "the table")


def test_a_file_that_is_not_json_is_rejected(tmp_path):
    path = tmp_path / "tile_table.json"
    path.write_text("{ not json")
    with pytest.raises(tiles.TileTableError, match="not JSON"):
        tiles.load(path)
    with pytest.raises(tiles.TileTableError, match="cannot read"):
        tiles.load(tmp_path / "missing.json")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_tune_refuses_without_a_gpu_and_leaves_the_table_alone():
    before = tiles.TABLE_PATH.read_bytes()
    result = subprocess.run([sys.executable, "-m", "electra_fast", "tune"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    assert "needs a CUDA GPU" in result.stderr
    assert tiles.TABLE_PATH.read_bytes() == before


def test_timing_writes_the_fastest_candidate_into_its_entry_only(monkeypatch):
    """electra-fast tune's shared step (tune_machines.time_into_table) on a fake clock: each candidate is timed
    with its tiles in force through the launchers' lookup, and only the matching entry takes the fastest."""
    import triton.testing

    from electra_fast.tune_machines import time_into_table

    table = json.loads(tiles.TABLE_PATH.read_text())
    key = dict(dtype="bf16", head_dim=64, dropout=False)
    current = tiles.lookup("attention.forward", "sm_90", **key)
    candidates = [dict(current, block_m=64, num_stages=stages) for stages in (2, 3, 4)]
    clock = {2: 3.0, 3: 1.0, 4: 2.0}  # milliseconds per num_stages: the 3-stage candidate is the fastest
    seen = []
    run = lambda: seen.append(tiles.lookup("attention.forward", "sm_90", **key))  # noqa: E731
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, rep: (fn(), clock[seen[-1]["num_stages"]])[1])
    before = copy.deepcopy(table)
    time_into_table(table, "attention.forward", "sm_90", key, candidates, run, 1, lambda ms: f"timed {ms} ms")

    assert seen == candidates  # each timing ran with its own candidate's tiles
    changed = [(old, new) for old, new in zip(before["entries"], table["entries"]) if old != new]
    assert len(changed) == 1
    old, new = changed[0]
    assert (new["kernel"], new["arch"], new["dtype"], new["head_dim"], new["dropout"]) == (
        "attention.forward", "sm_90", "bf16", 64, False)
    assert {k: new[k] for k in current} == candidates[1] and new["source"] == "timed 1.0 ms"
    tiles.parse(table)  # still a valid table
