"""electra-fast: Triton kernels and a PyTorch pre-trainer that make ELECTRA pre-training fast."""

import os
import sys

# On a CPU that other processes also use, OpenMP threads that spin while they wait for each other (libgomp's
# default: 300,000 spins) take a shared core from the thread that has work: on a 2-core machine with one core
# busy, a tiny step took 6-8x its idle time. Threads that spin 3,000 times, then sleep, took 2.1x, for about 7 %
# on the idle machine; sleeping at once (OMP_WAIT_POLICY=PASSIVE) 1.9x for 27 % (benchmarks/bench_shared_cpu.py,
# benchmarks/results/2026-12-05-cpu-shared*). OpenMP reads this when torch loads it, so it applies where
# electra_fast is imported first (the electra-fast command, python -m electra_fast); a wait policy or spin
# count already set is left as it is.
if "torch" not in sys.modules and not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ):
    os.environ["GOMP_SPINCOUNT"] = "3000"

from .backend import use_backend  # noqa: E402
from .hf_trainer import DataCollatorForElectra, ElectraMetricsCallback  # noqa: E402
from .ops import attention, attention_varlen, generator_loss_and_sample, mask_tokens, rtd_loss  # noqa: E402
from .optim import build_optimizer_and_scheduler, parameter_groups  # noqa: E402
from .outputs import MaskedTokens, RTDOutput  # noqa: E402
from .patch import apply_fast_electra  # noqa: E402
from .pretrainer import ElectraObjective, ElectraPretrainer, ElectraPretrainerConfig, ElectraPretrainingOutput  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "ElectraObjective",
    "ElectraPretrainer",
    "ElectraPretrainingOutput",
    "ElectraPretrainerConfig",
    "DataCollatorForElectra",
    "ElectraMetricsCallback",
    "apply_fast_electra",
    "build_optimizer_and_scheduler",
    "parameter_groups",
    "attention",
    "attention_varlen",
    "generator_loss_and_sample",
    "mask_tokens",
    "rtd_loss",
    "MaskedTokens",
    "RTDOutput",
    "use_backend",
]

from . import hf_attention

try:  # attn_implementation="electra_fast" in transformers models, when transformers is installed
    hf_attention.register()
except ImportError:  # pragma: no cover
    pass
