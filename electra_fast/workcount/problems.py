"""The shapes ``electra-fast inspect`` counts and the least work each op needs at them.

Minimums: generator head 2*M*V*E FLOPs forward, twice that backward; attention FA2's 4*B*H*L^2*D forward and
2.5x that backward; bytes: one read of every input and one write of every output of the op (partials that a
launch writes for the host to reduce count as their reduced size).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..presets import PRESETS

PAPER_BATCH = {"small": 128, "base": 256, "large": 2048}  # ELECTRA paper, Table 6 (pre-training batch size)
VOCAB = 30522
PASSES = {"masking": ("forward",), "generator_head": ("forward", "backward", "fwd+bwd"),
          "generator_head_chunked": ("forward", "backward", "fwd+bwd"), "rtd_loss": ("forward", "backward"),
          "attention": ("forward", "backward")}


@dataclass(frozen=True)
class Problem:
    """One ELECTRA training shape as the four fused ops see it."""

    name: str
    batch: int
    seq_len: int
    hidden: int  # discriminator hidden size: RTD width, attention heads * head_dim
    heads: int
    embedding: int  # generator-head input width (E)
    vocab: int
    mask_prob: float

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def masked(self) -> int:  # P, masked slots per row
        return int((self.mask_prob + 0.005) * self.seq_len)

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len


def problems(which: str) -> list[Problem]:
    """"full": ELECTRA small / base / large at sequence 128 and 512 with the paper's batch sizes; "small": one
    tiny shape (the tiny preset, batch 128: whole generator-head row units) that runs in seconds."""
    if which == "small":
        tiny = PRESETS["tiny"]
        return [Problem("tiny-L128-B128", 128, 128, tiny.hidden_size, tiny.num_heads, tiny.embedding_size, VOCAB,
                        tiny.mask_prob)]
    return [Problem(f"{size}-L{seq_len}-B{PAPER_BATCH[size]}", PAPER_BATCH[size], seq_len, preset.hidden_size,
                    preset.num_heads, preset.embedding_size, VOCAB, preset.mask_prob)
            for size, preset in ((name, PRESETS[name]) for name in ("small", "base", "large"))
            for seq_len in (128, 512)]


# --- the least work of each op: {pass: (FLOPs, bytes)} ----------------------------------------------------------

def masking_minimum(p: Problem) -> dict:
    rows = p.batch
    io = rows * p.seq_len * (8 + 8 + 8 + 1) + rows * p.masked * (8 + 8 + 4)  # ids, mask, out ids, is_masked; slots
    return {"forward": (0, io)}


def rtd_minimum(p: Problem) -> dict:
    n, h = p.tokens, p.hidden
    parameters = 2 * h * 4 + 4  # dense bias, prediction weight, prediction bias (fp32)
    forward = n * h * 2 + parameters + n * (8 + 8 + 1) + n * (4 + 1) + 4 + 5 * 4  # -> logits, labels, loss, counts
    backward = (n * h * 2 + parameters + n * (4 + 1 + 1 + 4) + 4  # projected, params, logits, labels, valid, dlogits
                + n * h * 2 + parameters)  # -> d(projected), d(parameters)
    return {"forward": (0, forward), "backward": (0, backward)}


def generator_head_minimum(p: Problem) -> dict:
    """Forward: the logits GEMM, reading the inputs once, writing per-row results. Backward: the dh and dW GEMMs
    from the saved inputs, writing the gradients. The fused design does dh's GEMM in its forward: its forward
    shows 2x, its backward 1x, and fwd+bwd is the figure to compare."""
    m, v, e = p.batch * p.masked, p.vocab, p.embedding
    inputs = m * e * 2 + v * e * 2 + v * 2 + m * 8  # hidden, weight, bias, targets
    forward = inputs + m * (4 + 4 + 8)  # -> lse, target logit, sample
    backward = inputs + m * (4 + 4) + m * e * 2 + v * e * 2 + v * 4  # + lse, row scale -> dh, dW, db
    return {"forward": (2 * m * v * e, forward), "backward": (4 * m * v * e, backward),
            "fwd+bwd": (6 * m * v * e, forward + backward - inputs)}


def attention_minimum(p: Problem) -> dict:
    b, h, n, d = p.batch, p.heads, p.seq_len, p.head_dim
    tensor = b * n * h * d * 2
    flops = 4 * b * h * n * n * d  # FlashAttention-2's count: QK^T and PV
    forward = 3 * tensor + b * n * 4 + tensor + b * h * n * 4  # q, k, v, key bias -> out, lse
    backward = 5 * tensor + b * h * n * 4 + b * n * 4 + 3 * tensor  # q, k, v, out, dout, lse, bias -> dq, dk, dv
    return {"forward": (flops, forward), "backward": (int(2.5 * flops), backward)}


MINIMUM = {"masking": masking_minimum, "generator_head": generator_head_minimum,
           "generator_head_chunked": generator_head_minimum, "rtd_loss": rtd_minimum, "attention": attention_minimum}
