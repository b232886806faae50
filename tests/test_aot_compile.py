"""Every registered kernel configuration compiles for sm_80 and sm_90a as the JIT builds it (docs/design.md §6):
no spills, shared memory within the architecture's limit, and the SASS its registration expects (HGMMA in the
attention kernels' loops on sm_90a, asynchronous copies where a loop streams K/V or Q/dO).

Runs ``python -m electra_fast.aot`` in a subprocess with TRITON_INTERPRET unset, since the interpreter
replaces the JIT functions in this process; CI runs it under Triton 3.6.0 and the newest release.
"""

import json
import os
import subprocess
import sys

import pytest

from electra_fast import aot

ATTENTION = ("attention_forward_kernel", "attention_backward_dq_kernel", "attention_backward_dkdv_kernel")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    path = tmp_path_factory.mktemp("aot") / "aot.json"
    result = subprocess.run([sys.executable, "-m", "electra_fast.aot", "--json", str(path)], env=env,
                            capture_output=True, text=True, timeout=1800)
    print(result.stdout)
    rows = json.loads(path.read_text()) if path.exists() else []
    return result, rows


def test_every_configuration_compiles_without_spills_within_shared_memory(report):
    result, rows = report
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    assert rows and not [row for row in rows if "error" in row or row["problems"]]
    assert {row["arch"] for row in rows} == {"sm_80", "sm_90a"}
    assert all(row["spills"] == 0 and row["local_loads"] == 0 and row["local_stores"] == 0 for row in rows)
    assert all(row["shared_bytes"] <= aot.SHARED_LIMIT[row["capability"]] for row in rows)
    assert any(row["kernel"].startswith("philox_draws_kernel") for row in rows)


def test_attention_is_compiled_with_the_jit_specialisation(report):
    """Aligned pointers and strides divisible by 16 carry tt.divisibility, the unit bias stride is a constant:
    what Triton's binder gives the launchers' real (contiguous, ELECTRA-shaped) inputs."""
    _, rows = report
    attention = [row for row in rows if row["kernel"].startswith(ATTENTION)]
    assert {row["kernel"].split("[")[0] for row in attention} == set(ATTENTION)
    for row in attention:
        divisible = set(row["specialisation"]["divisible"])
        assert {"q_ptr", "k_ptr", "v_ptr", "stride_kl", "stride_vl", "q_len_padded"} <= divisible, row["kernel"]
        assert "seed" not in divisible and "seed" not in row["specialisation"]["constants"]  # do_not_specialize
    assert any(row["specialisation"]["constants"] == ["stride_biasl"] for row in attention)


def test_attention_loops_issue_wgmma_on_sm90a_and_stream_with_asynchronous_copies(report):
    _, rows = report
    attention = [row for row in rows if row["kernel"].startswith(ATTENTION)]
    assert all(set(row["expect"]) == {"wgmma", "async_copy"} for row in attention)
    assert all(row["hgmma_in_loop"] > 0 and row["hmma"] == 0 for row in attention if row["arch"] == "sm_90a")
    assert all(row["async_copies_in_loop"] > 0 for row in attention)


GENERATOR_HEAD = ("generator_head_forward_kernel", "generator_head_backward_kernel")


def test_generator_head_is_compiled_from_its_launchers_with_the_jit_specialisation(report):
    """Every pass (forward with and without gradients, backward) in bf16, fp16 and fp32 on both architectures,
    from captured launches: aligned pointers and the row strides divisible by 16 (ELECTRA's E), unit column
    strides constant, the step seed neither (do_not_specialize), as for every seeded kernel."""
    _, rows = report
    head = [row for row in rows if row["kernel"].startswith(GENERATOR_HEAD)]
    passes = {(row["kernel"].split("[")[0], "COMPUTE_GRAD=True" in row["kernel"], row["arch"],
               row["kernel"].split("DOT_DTYPE=")[1].split(",")[0]) for row in head}
    assert len(passes) == 3 * 3 * 2, sorted(passes)
    for row in head:
        spec = row["specialisation"]
        assert {"hidden_ptr", "weight_ptr", "stride_hm", "stride_wv", "E"} <= set(spec["divisible"]), row["kernel"]
        assert {"stride_he", "stride_we"} <= set(spec["constants"]), row["kernel"]
    seeded = [row for row in rows if row["kernel"].startswith(("generator_head_forward", "chunk_epilogue",
                                                               "mask_tokens", "attention"))]
    assert all("seed" not in row["specialisation"]["divisible"] + row["specialisation"]["constants"]
               for row in seeded)
    assert any(row["kernel"].startswith("chunk_epilogue_kernel") for row in rows)


def test_generator_head_loops_issue_wgmma_on_sm90a_and_stream_with_asynchronous_copies(report):
    """16-bit passes: HGMMA inside the GEMM loops on sm_90a (no HMMA), 16-byte cp.async of the h/W chunks in
    the loops on both architectures. fp32 passes use IEEE products: no HGMMA expected."""
    _, rows = report
    head = [row for row in rows if row["kernel"].startswith(GENERATOR_HEAD)]
    half = [row for row in head if row["sixteen_bit"]]
    assert half and all(set(row["expect"]) == {"wgmma", "async_copy"} for row in half)
    assert all(row["hgmma_in_loop"] > 0 and row["hmma"] == 0 for row in half if row["arch"] == "sm_90a")
    assert all(row["async_copies_in_loop"] > 0 for row in half)
    assert all(row["expect"] == [] and row["hgmma"] == 0 for row in head if not row["sixteen_bit"])


def test_the_checks_fail_what_they_should():
    """A row without HGMMA or async copies where they are expected, with a spill or over the shared-memory limit
    is reported; expectations only bind where they apply (wgmma: sm_90a with 16-bit inputs)."""
    good = dict(spills=0, shared_bytes=1024, capability=90, expect=["wgmma", "async_copy"], sixteen_bit=True,
                hgmma_in_loop=4, async_copies_in_loop=2)
    assert aot.check(good) == []
    assert aot.check({**good, "hgmma_in_loop": 0}) == ["no HGMMA (wgmma) in a loop on sm_90a"]
    assert aot.check({**good, "hgmma_in_loop": 0, "capability": 80}) == []
    assert aot.check({**good, "hgmma_in_loop": 0, "sixteen_bit": False}) == []
    assert aot.check({**good, "async_copies_in_loop": 0}) == ["no 16-byte asynchronous copy (LDGSTS.128/TMA) in a loop"]
    assert aot.check({**good, "spills": 8}) == ["8 bytes spilled"]
    assert aot.check({**good, "shared_bytes": 228 * 1024})[0].startswith("233472 bytes of shared memory")
    assert aot.check({**good, "expect": []}) == []


def test_sass_facts_count_instructions_inside_loops():
    sass = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ ;
        /*0020*/                   LDGSTS.E.BYPASS.128 [R3], desc[UR6][R4.64] ;
        /*0028*/                   LDGSTS.E [R5], desc[UR6][R6.64] ;
        /*0030*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24 ;
        /*0040*/              @!P0 BRA 0x20 ;
        /*0050*/                   STL [R1], R2 ;
        /*0060*/                   EXIT ;
    """
    facts = aot.sass_facts(sass)
    assert facts["loops"] == 1
    assert (facts["hgmma"], facts["hgmma_in_loop"]) == (2, 1)
    # the 4-byte LDGSTS (the bias) is an asynchronous copy but does not stream a tile
    assert (facts["async_copies"], facts["async_copies_in_loop"]) == (2, 1)
    assert (facts["local_loads"], facts["local_stores"]) == (0, 1)
