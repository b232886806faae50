"""One ELECTRA pre-training step (forward + backward + clip + AdamW), electra-fast against what users run today.

Setups, same sizes (a preset of ``electra_fast.presets``: base on CUDA at batches 64 x 128 and 16 x 512, large
enough that kernels rather than the host set the time; tiny and small on the CPU at 16 x 128, the quick matrix
of common.QUICK tiny alone at 4 x 64; vocabulary 30522; full rows, as packed pre-training batches are), in the
same run:

* ``electra_fast``: ``ElectraPretrainer`` (exact masking, the head at the masked slots only, fused Gumbel
  sampling, electra-fast attention; on the CPU the compiled CPU path, on CUDA the Triton kernels);
* ``hf_recipe``: the recipe people write by hand: ``ElectraForMaskedLM`` + ``ElectraForPreTraining`` with
  SDPA attention and tied embeddings, Bernoulli masking as ``DataCollatorForLanguageModeling`` does it,
  the full [B, L, V] generator logits and HF's own losses, a Gumbel sample at the masked positions and BCE;
* ``electra_pytorch``: lucidrains' ``electra-pytorch`` wrapper around the same two models (when installed);
* the optimiser: AdamW with the official groups and schedule, ``ef.build_optimizer_and_scheduler`` (fused
  AdamW) for electra-fast, torch's default AdamW for the others, as their users write it;
* each of these with ``+compile``: ``torch.compile`` of the pre-trainer, of the two HF models, or of the
  wrapper: what a user tries next. These come after every eager setup (each costs a cold compile; not on the
  CPU in the quick matrix).

Each timed round is one whole step (under bf16 autocast on CUDA). Peak memory: on CUDA
``max_memory_allocated`` of one step; on the CPU the peak RSS of a fresh process that builds the setup and
runs three steps (``python benchmarks/bench_step.py --variant NAME --preset NAME``; not in the quick matrix),
since the allocator's reuse in a long benchmark process says little. ``test_step_profile`` profiles one
electra-fast step per batch shape and records each kernel's time (each CPU op's on the CPU) with the fused op
it belongs to, for the share of the step in each.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict

import pytest
import torch

import electra_fast as ef
from electra_fast.optim import linear_warmup_decay, parameter_groups
from electra_fast.presets import electra_configs, get_preset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DEVICE, ON_GPU, QUICK, device_name, measure, sync  # noqa: E402
from rows import record  # noqa: E402

OP = "pretraining_step"
VOCAB = 30522
PAD, CLS, SEP, MASK = 0, 101, 102, 103
SPECIALS = (PAD, CLS, SEP)
if ON_GPU:  # every setup runs under bf16 autocast (the kernels' dtype)
    PRESETS, SHAPES = ("base",), ((64, 128), (16, 512))
elif QUICK:
    PRESETS, SHAPES = ("tiny",), ((4, 64),)
else:
    PRESETS, SHAPES = ("tiny", "small"), ((16, 128),)
VARIANTS = ("electra_fast", "hf_recipe", "electra_pytorch")
# Kernel-name fragments of the ops electra-fast fuses (kernels/, and their CPU-path ops), and of library GEMMs.
FUSED_OPS = {
    "attention": ("attention",),
    "generator head": ("generator_head", "chunk_epilogue"),
    "rtd loss": ("rtd_loss",),
    "masking": ("mask_tokens",),
    "matrix products": ("gemm", "nvjet", "cutlass", "xmma", "aten::mm", "aten::addmm", "aten::bmm", "aten::linear"),
    "optimizer": ("adam", "multi_tensor"),
}


def make_batch(batch: int, seq_len: int, device=DEVICE):
    """[CLS] ... [SEP] rows of random ids, every position real (pre-training batches are packed)."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, VOCAB, (batch, seq_len), generator=generator)
    ids[:, 0], ids[:, -1] = CLS, SEP
    return ids.to(device), torch.ones(batch, seq_len, dtype=torch.long, device=device)


def hf_models(preset: str):
    """Generator and discriminator at the preset's sizes with SDPA attention, embeddings shared and tied."""
    from transformers import ElectraForMaskedLM, ElectraForPreTraining

    gen_config, disc_config = electra_configs(get_preset(preset), VOCAB, pad_token_id=PAD)
    generator, discriminator = ElectraForMaskedLM(gen_config), ElectraForPreTraining(disc_config)
    for model in (generator, discriminator):
        model.set_attn_implementation("sdpa")
    discriminator.electra.embeddings = generator.electra.embeddings
    generator.generator_lm_head.weight = generator.electra.embeddings.word_embeddings.weight
    return generator, discriminator


class HFRecipe(torch.nn.Module):
    """The hand-written recipe: HF collator-style masking, full generator logits, Gumbel sample, HF's losses."""

    def __init__(self, preset: str, compile_models: bool = False):
        super().__init__()
        self.generator, self.discriminator = hf_models(preset)
        self.run_generator, self.run_discriminator = self.generator, self.discriminator
        if compile_models:
            self.run_generator = torch.compile(self.generator)
            self.run_discriminator = torch.compile(self.discriminator)

    def forward(self, ids, mask):
        special = torch.isin(ids, torch.tensor(SPECIALS, device=ids.device)) | (mask == 0)
        chosen = torch.bernoulli(torch.full(ids.shape, 0.15, device=ids.device)).bool() & ~special
        use_mask_token = torch.bernoulli(torch.full(ids.shape, 0.85, device=ids.device)).bool() & chosen
        generator_out = self.run_generator(ids.masked_fill(use_mask_token, MASK), attention_mask=mask,
                                           labels=ids.masked_fill(~chosen, -100))
        with torch.no_grad():
            logits = generator_out.logits[chosen].float()
            noise = -torch.log(-torch.log(torch.rand_like(logits).clamp_min(1e-20)))
            corrupted = ids.masked_scatter(chosen, (logits + noise).argmax(-1))
        discriminator_out = self.run_discriminator(corrupted, attention_mask=mask, labels=(corrupted != ids).long())
        return generator_out.loss + 50.0 * discriminator_out.loss


class _LogitsOf(torch.nn.Module):
    """electra-pytorch calls its generator and discriminator as ``net(ids, **kwargs) -> logits``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids, **kwargs):
        return self.model(ids, **kwargs).logits


def electra_pytorch_available() -> bool:
    try:
        import electra_pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def build(variant: str, preset: str):
    """(model, loss_fn(model, ids, mask, step) -> loss) of one setup, on DEVICE."""
    compile_model = variant.endswith("+compile")
    name = variant.removesuffix("+compile")
    if name == "electra_fast":
        model = ef.ElectraPretrainer.from_preset(preset, vocab_size=VOCAB, mask_token_id=MASK,
                                                 special_token_ids=SPECIALS, pad_token_id=PAD).to(DEVICE)
        run = torch.compile(model) if compile_model else model
        return model, lambda ids, mask, step: run(ids, mask, seed=step).loss
    if name == "hf_recipe":
        model = HFRecipe(preset, compile_models=compile_model).to(DEVICE)
        return model, lambda ids, mask, step: model(ids, mask)
    if name == "electra_pytorch":
        from electra_pytorch import Electra

        generator, discriminator = hf_models(preset)
        model = Electra(_LogitsOf(generator), _LogitsOf(discriminator), mask_token_id=MASK, pad_token_id=PAD,
                        mask_ignore_token_ids=[CLS, SEP], mask_prob=0.15, disc_weight=50.0).to(DEVICE)
        run = torch.compile(model) if compile_model else model
        return model, lambda ids, mask, step: run(ids, attention_mask=mask).loss
    raise ValueError(f"unknown variant {variant!r}")


def training_step(variant: str, preset: str, shape: tuple[int, int]):
    """A closure that runs one whole step: forward, backward, clip to 1.0, AdamW and the schedule."""
    torch.manual_seed(0)
    model, loss_fn = build(variant, preset)
    lr = get_preset(preset).learning_rate
    if variant.startswith("electra_fast"):  # the library's optimiser (fused AdamW)
        optimizer, scheduler = ef.build_optimizer_and_scheduler(model, lr=lr, warmup_steps=10, total_steps=10_000)
    else:  # what a hand-written loop builds: torch's default AdamW, the same groups and schedule
        optimizer = torch.optim.AdamW(parameter_groups(model), lr=lr, betas=(0.9, 0.999), eps=1e-6)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: linear_warmup_decay(step, 10, 10_000))
    ids, mask = make_batch(*shape)
    counter = iter(range(10**9))

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=ON_GPU):
            loss = loss_fn(ids, mask, next(counter))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def peak_rss_bytes() -> int:
    """This process's peak resident set size. Linux's ru_maxrss keeps the high-water mark of the process
    image before exec (a child forked from a big benchmark process would report its parent's size), so
    read the current image's VmHWM where /proc has it."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def fresh_process_peak_rss(variant: str, preset: str, shape: tuple[int, int]) -> int | None:
    """Peak RSS in bytes of a new process that builds ``variant`` and runs three steps (CPU only)."""
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--variant", variant, "--preset", preset, "--steps", "3",
         "--batch", str(shape[0]), "--seq-len", str(shape[1])],
        capture_output=True, text=True, timeout=1800,
    )
    if result.returncode != 0:
        print(result.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_bytes"]


def variants():
    for name in VARIANTS:
        for suffix in ("", "+compile"):
            yield name + suffix


def shape_name(preset: str, shape: tuple[int, int]) -> str:
    return f"{preset} V={VOCAB} B={shape[0]} L={shape[1]}"


def cases(suffix: str) -> list:
    return [pytest.param(name + suffix, preset, shape, id=f"{name}{suffix}-{preset}-{shape[0]}x{shape[1]}")
            for shape in SHAPES for preset in PRESETS for name in VARIANTS]


def time_step(benchmark, variant: str, preset: str, shape: tuple[int, int]):
    if variant.startswith("electra_pytorch") and not electra_pytorch_available():
        pytest.skip("electra-pytorch is not installed")
    step = training_step(variant, preset, shape)
    peak_rss = None if ON_GPU or QUICK else fresh_process_peak_rss(variant, preset, shape)
    measure(benchmark, step, op=OP, impl=variant, shape=shape_name(preset, shape),
            rounds=5 if preset == "tiny" else 3, warmup=2, tokens=shape[0] * shape[1], sequences=shape[0],
            baseline="hf_recipe+compile" if variant.endswith("+compile") else "hf_recipe",
            **({} if peak_rss is None else {"peak_rss_bytes": peak_rss}))


# pytest runs these in file order: every eager setup, then the profile, then the compiled setups (each a cold
# compile), so that a time limit cuts the latter.
@pytest.mark.parametrize("variant,preset,shape", cases(""))
def test_pretraining_step(benchmark, variant, preset, shape):
    time_step(benchmark, variant, preset, shape)


def fused_op(kernel: str) -> str:
    lowered = kernel.lower()
    return next((op for op, fragments in FUSED_OPS.items() if any(f in lowered for f in fragments)), "other")


def profiled_seconds(step) -> dict[str, float]:
    """Seconds per kernel name in one profiled call of ``step``: CUDA time of each kernel on a GPU, self CPU
    time of each op on the CPU."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ON_GPU else [])
    with profile(activities=activities) as profiler:
        step()
        sync()
    seconds = defaultdict(float)
    for event in profiler.events():
        if ON_GPU and event.device_type == DeviceType.CUDA:
            seconds[event.name] += event.device_time_total / 1e6
        elif not ON_GPU and event.device_type == DeviceType.CPU:
            seconds[event.name] += event.self_cpu_time_total / 1e6
    return dict(seconds)


@pytest.mark.parametrize("preset,shape", [pytest.param(preset, shape, id=f"{preset}-{shape[0]}x{shape[1]}")
                                          for shape in SHAPES for preset in PRESETS])
def test_step_profile(preset, shape):
    """One electra-fast step under torch.profiler: a "profile" row per kernel with the fused op it belongs to."""
    step = training_step("electra_fast", preset, shape)
    for _ in range(2):  # warm-up: compilation, and the optimiser's state
        step()
    seconds = profiled_seconds(step)
    assert seconds, "the profiler recorded no kernel"
    for kernel, value in sorted(seconds.items(), key=lambda item: -item[1]):
        record({"kind": "profile", "impl": "electra_fast", "shape": shape_name(preset, shape), "device": device_name(),
                "kernel": kernel, "fused_op": fused_op(kernel), "seconds": value})


@pytest.mark.parametrize("variant,preset,shape", cases("+compile"))
def test_pretraining_step_compiled(benchmark, variant, preset, shape):
    if QUICK and not ON_GPU:
        pytest.skip("the CPU's quick matrix compiles no whole model")
    time_step(benchmark, variant, preset, shape)


def main(argv=None):
    """One setup in this process: time a few steps and print seconds per step, tokens/s and peak memory as JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="electra_fast", help=f"one of {list(variants())}")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args(argv)
    step = training_step(args.variant, args.preset, (args.batch, args.seq_len))
    for _ in range(2):  # warm-up: compilation, and the optimiser's state
        step()
    sync()
    start = time.perf_counter()
    for _ in range(args.steps - 1):
        step()
    sync()
    seconds = (time.perf_counter() - start) / max(1, args.steps - 1)
    peak_rss = peak_rss_bytes()
    print(json.dumps({
        "variant": args.variant, "preset": args.preset, "device": str(DEVICE), "seconds_per_step": seconds,
        "tokens_per_second": args.batch * args.seq_len / seconds, "peak_rss_bytes": peak_rss,
        "max_memory_allocated": torch.cuda.max_memory_allocated() if ON_GPU else None,
    }))


if __name__ == "__main__":
    main()
