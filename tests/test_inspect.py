"""``electra-fast inspect`` (``electra_fast.workcount``): counts scale exactly with the grid, and the kernels meet
their work bounds (docs/design.md §7). Counting needs the Triton interpreter."""

import dataclasses
import itertools
import json

import pytest

from electra_fast.kernels import registry

pytestmark = pytest.mark.skipif(not registry.interpreted(), reason="counting patches the Triton interpreter")

from electra_fast import cli  # noqa: E402
from electra_fast.workcount import model, problems, runs  # noqa: E402

# Small vocabularies keep the generator head quick; 128 rows x P = 19 slots = 19 whole 128-row units. With 800 ids
# each vocabulary split is one tile; with 4000 the splits hold several tiles.
PROBLEM = problems.Problem("linearity", batch=128, seq_len=128, hidden=128, heads=2, embedding=64, vocab=800,
                           mask_prob=0.15)
CASES = [(kernel, PROBLEM) for kernel in runs.KERNELS]
CASES.append(("generator_head", dataclasses.replace(PROBLEM, vocab=4000)))


def _totals(kernel, problem, units):
    result = runs.KERNELS[kernel].run(problem, units)
    return {name: runs.pass_totals(result[name]) for name in problems.PASSES[kernel]}


@pytest.mark.parametrize("kernel, problem", CASES, ids=[f"{k}-V{p.vocab}" for k, p in CASES])
def test_counts_extrapolate_exactly_from_the_probes(kernel, problem):
    """Per-program work does not depend on the number of units: the counts at the probe corners, extrapolated
    one step further on every axis, equal the counts of a run there."""
    probes = runs.KERNELS[kernel].probes(problem)
    target = tuple(hi + (hi - lo) for lo, hi in probes)
    corners = {corner: _totals(kernel, problem, corner) for corner in itertools.product(*probes)}
    actual = _totals(kernel, problem, target)
    for name in problems.PASSES[kernel]:
        for key in ("flops", "bytes"):
            values = {corner: totals[name][key] for corner, totals in corners.items()}
            assert runs.extrapolate(values, probes, target) == actual[name][key], (name, key)
        assert actual[name]["out_of_bounds"] == 0


@pytest.mark.parametrize("kernel", ["masking", "rtd_loss", "attention"])
def test_counts_are_linear_in_the_grid(kernel):
    """Where the grid is the only thing that grows, the counts of 2 units are twice those of 1."""
    one, two = _totals(kernel, PROBLEM, (1,)), _totals(kernel, PROBLEM, (2,))
    for name in problems.PASSES[kernel]:
        assert two[name]["flops"] == 2 * one[name]["flops"] and two[name]["bytes"] == 2 * one[name]["bytes"]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """`electra-fast inspect --json` on the small shape set (compiles the AOT report in a subprocess)."""
    path = tmp_path_factory.mktemp("inspect") / "inspect.json"
    status = cli.main(["inspect", "--json", str(path), "--shapes", "small"])
    rows = json.loads(path.read_text())
    assert status == 0
    return rows


def _find(rows, kernel, name):
    return [row for row in rows if row["kernel"] == kernel and row["pass"] == name]


@pytest.mark.slow
def test_records_have_every_field_and_no_out_of_bounds(records):
    fields = {"kernel", "pass", "shape", "flops", "min_flops", "bytes", "min_bytes", "registers", "spills",
              "shared_bytes", "out_of_bounds"}
    assert {(row["kernel"], row["pass"]) for row in records} == {
        (kernel, name) for kernel, names in problems.PASSES.items() for name in names}
    for row in records:
        assert fields <= set(row), row["kernel"]
        assert row["out_of_bounds"] == 0, row
        if not row["launches"]:  # a pass done by library calls only (the chunked head's backward)
            continue
        assert row["registers"] is not None and row["spills"] == 0, row  # the sm_90a configuration was found
        assert row["sm_80"]["registers"] is not None and row["sm_80"]["spills"] == 0, row
        assert 0 < row["occupancy"] <= 1 and 0 < row["sm_80"]["occupancy"] <= 1, row


def test_occupancy_model_follows_the_cuda_rules():
    # 4 warps at 128 registers: 16 KiB registers per block -> 4 blocks -> 16 of 64 warps.
    assert model.occupancy(128, 0, 4, "sm_90a") == 0.25
    # 255 registers round up to 256 per thread: 2 blocks of 4 warps on 64 Ki registers.
    assert model.occupancy(255, 0, 4, "sm_80") == 0.125
    # Shared memory binds: 100 KiB (+1 KiB) per block fits once on an A100's 164 KiB, twice on an H100's 228 KiB.
    assert model.occupancy(32, 100 * 1024, 4, "sm_80") == 4 / 64
    assert model.occupancy(32, 100 * 1024, 4, "sm_90a") == 8 / 64


@pytest.mark.slow
def test_attention_backward_flops_within_one_and_a_half_of_fa2(records):
    for row in _find(records, "attention", "backward"):
        assert row["flops"] <= 1.5 * row["min_flops"], row["flops"] / row["min_flops"]


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["masking", "rtd_loss"])
def test_memory_bound_kernels_move_at_most_one_and_a_half_times_the_minimum(records, kernel):
    for row in records:
        if row["kernel"] == kernel:
            assert row["bytes"] <= 1.5 * row["min_bytes"], (row["pass"], row["bytes"] / row["min_bytes"])


@pytest.mark.slow
def test_generator_head_fused_design_within_four_gemms(records):
    """The fused design (forward with dh, backward recomputing the logits once for dW): 4 GEMMs of work against
    the minimum 3, i.e. <= 1.4x: exactly two GEMMs per pass over the shape padded to that pass's tiles (the
    last vocabulary tile's padding on top of 4/3)."""
    import torch

    from electra_fast.kernels.generator_head import tiles_for_gpu

    (total,) = _find(records, "generator_head", "fwd+bwd")
    assert total["flops"] <= 1.4 * total["min_flops"], total["flops"] / total["min_flops"]
    problem = problems.Problem(**total["problem"])
    rows, tiles = problem.batch * problem.masked, tiles_for_gpu(torch.float16)

    def padded(n, block):
        return -(-n // block) * block

    width = padded(problem.embedding, tiles.block_e)
    forward = 4 * padded(rows, tiles.forward_block_m) * padded(problem.vocab, tiles.forward_block_v) * width
    backward = 4 * padded(rows, tiles.backward_block_m) * padded(problem.vocab, tiles.backward_block_v) * width
    assert total["flops"] == forward + backward
    assert total["flops"] == pytest.approx(4 / 3 * total["min_flops"], rel=3e-3)


@pytest.mark.slow
def test_generator_head_chunked_design_is_three_gemms(records):
    (total,) = _find(records, "generator_head_chunked", "fwd+bwd")
    assert total["flops"] == total["min_flops"]


def test_generator_head_fused_work_at_the_presets_widths():
    """E = 128, 768, 1024 (ELECTRA small, base, large): the fused design's fwd+bwd FLOPs stay <= 1.4x the three
    GEMMs; E is walked in chunks, each logit tile computed once per pass, so the ratio does not grow with E."""
    for embedding in (128, 768, 1024):
        problem = dataclasses.replace(PROBLEM, embedding=embedding, batch=128, vocab=1000)
        counts = runs.scaled_counts("generator_head", problem)
        minimum = problems.generator_head_minimum(problem)
        assert counts["fwd+bwd"]["flops"] <= 1.4 * minimum["fwd+bwd"][0], embedding
        assert counts["fwd+bwd"]["out_of_bounds"] == 0


@pytest.mark.slow
def test_auto_strategy_agrees_with_the_counted_work_at_electras_shapes():
    """`strategy="auto"` decides from a closed-form model of each design's work; at every reference shape it
    picks the design whose counted work (the interpreter's counts, the chunked design's library work added) has
    the lower roofline time under the same peaks (measured ones where a GPU run recorded them)."""
    from electra_fast.fused import generator_head_strategy as strategies

    peak, bandwidth = strategies.current_peaks()
    for problem in problems.problems("full"):
        fused = runs.scaled_counts("generator_head", problem)["fwd+bwd"]
        chunked = runs.scaled_counts("generator_head_chunked", problem)["fwd+bwd"]
        counted = {"fused": max(fused["flops"] / peak, fused["bytes"] / bandwidth),
                   "chunked": chunked["flops"] / peak + chunked["bytes"] / bandwidth}
        rows = problem.batch * problem.masked
        chosen = strategies.choose(rows, problem.vocab, problem.embedding, 2, machine=(peak, bandwidth))
        assert chosen == min(counted, key=counted.get), (problem.name, counted)
