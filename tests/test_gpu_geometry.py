"""``registry.gpu_geometry``: inside it launchers take a GPU's tiles, SM count and architecture from it (and its
scaling fields), outside it nothing changes, and it is undone on exit, an exception included (docs/design.md §7.5)."""

import pytest
import torch

from electra_fast.kernels import attention, generator_head, masking, registry, rtd_loss

CPU = torch.device("cpu")


def _attention_tiles():
    return attention._launch_setup(torch.zeros(1, 2, 8, 64, dtype=torch.float16), torch.zeros(2, 1), 0.0)[1]


def _launchers_outside():
    """What the launchers read with no geometry given."""
    return (registry.current_geometry(), registry.gpu_tiles(), generator_head.tiles_for(torch.float16),
            masking.rows_per_program(64, 128), _attention_tiles())


def test_launchers_read_the_geometry_inside_and_are_restored_after():
    outside = _launchers_outside()
    if registry.interpreted():  # the interpreter's own tiles and grids
        assert outside[:4] == (None, False, generator_head.INTERPRETER_TILES, 64)
    with registry.gpu_geometry(sms=132, arch="sm_90") as geometry:
        assert registry.current_geometry() is geometry and registry.gpu_tiles()
        assert registry.multiprocessors(CPU) == 132 and registry.target_arch(CPU) == "sm_90"
        assert generator_head.tiles_for(torch.float16) == generator_head.tiles_for_gpu(torch.float16)
        assert masking.rows_per_program(64, 128) == 1
        assert _attention_tiles() == attention._tile_configs(torch.float16, 64, False, "sm_90")
        with registry.gpu_geometry(sms=108, arch="sm_80"):  # nested: the inner one, then the outer one again
            assert registry.multiprocessors(CPU) == 108 and registry.target_arch(CPU) == "sm_80"
        assert registry.multiprocessors(CPU) == 132 and registry.current_geometry() is geometry
    assert _launchers_outside() == outside
    with pytest.raises(RuntimeError, match="inside"):
        with registry.gpu_geometry(sms=132, arch="sm_90"):
            raise RuntimeError("inside")
    assert _launchers_outside() == outside


def test_an_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="sm_75"):
        with registry.gpu_geometry(sms=40, arch="sm_75"):
            pass
    assert registry.current_geometry() is None


@pytest.mark.skipif(not registry.interpreted(), reason="runs the launchers on CPU tensors in the interpreter")
def test_the_scaling_fields_set_the_rtd_groups_and_the_vocabulary_splits():
    from electra_fast.sanitizer import sanitize

    n, h = 64, 32  # 4 row blocks of 16: 4 backward groups unless capped
    g = torch.Generator().manual_seed(0)
    projected = torch.randn(n, h, generator=g)
    args = (projected, torch.randn(h, generator=g), torch.randn(h, generator=g))
    logits, labels = torch.randn(n, generator=g), torch.zeros(n, dtype=torch.uint8)
    rest = (logits, labels, torch.ones(n, dtype=torch.uint8), torch.zeros(n), torch.ones(1), "gelu")
    assert rtd_loss.backward(*args, *rest)[1].shape == (4, h)
    with registry.gpu_geometry(sms=132, arch="sm_90", rtd_backward_groups=2):
        assert rtd_loss.backward(*args, *rest)[1].shape == (2, h)  # 2 groups of 32 rows

    # One row tile and 4 vocabulary tiles of the table's sm_90 tiles: one row program splits the vocabulary 4 ways
    # to fill 132 SMs; as for 600 row tiles' rows (600 row programs, the GPU already full) it does not split.
    tiles = generator_head.tiles_for_gpu(torch.float16, "sm_90")
    rows, vocab = tiles.forward_block_m, 4 * tiles.forward_block_v
    hidden, weight = torch.randn(rows, 32, generator=g).half(), torch.randn(vocab, 32, generator=g).half()
    targets = torch.randint(0, vocab, (rows,), generator=g)
    grids = []
    for split_rows in (None, rows * 600):
        with registry.gpu_geometry(sms=132, arch="sm_90", generator_head_split_rows=split_rows):
            with sanitize(skip_dot_math=True) as launches:
                generator_head.forward(hidden, weight, None, targets, temperature=1.0, disallow_correct=False,
                                       seed=0, compute_grad=False)
        grids.append(launches[0].grid[:2])
    assert grids == [(1, 4), (1, 1)]
