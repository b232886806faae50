"""electra-fast: Triton kernels and a PyTorch pre-trainer that make ELECTRA pre-training fast."""

from .backend import use_backend
from .hf_trainer import DataCollatorForElectra, ElectraMetricsCallback
from .ops import attention, attention_varlen, generator_loss_and_sample, mask_tokens, rtd_loss
from .optim import build_optimizer_and_scheduler, parameter_groups
from .outputs import MaskedTokens, RTDOutput
from .patch import apply_fast_electra
from .pretrainer import ElectraObjective, ElectraPretrainer, ElectraPretrainerConfig, ElectraPretrainingOutput

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
