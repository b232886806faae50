"""The step seed of a model called without ``seed=``: a counter kept in the model's state dict.

Training loops written for Hugging Face models (``Trainer``, ``accelerate``, electra-pytorch's) never pass a
seed. ``SeedCounter`` gives an ``nn.Module`` a Python-int counter that names the seed of each forward and
travels in ``state_dict()`` as ``seed_counter`` (a 0-d int64 tensor), so that resuming from a checkpoint
continues the same stream of masks, samples and attention dropout. The counter lives on the host: reading it
costs no device synchronisation, and ``model.to(device)`` leaves it alone.

State dicts written before the counter existed (``electra-fast pretrain`` checkpoints) still load with
``strict=True``; the counter then keeps its value.
"""

from __future__ import annotations

import torch

from . import distributed

SEED_COUNTER_KEY = "seed_counter"


class SeedCounter:
    """Mixin for ``nn.Module`` subclasses (list it before the module base class)."""

    seed_counter: int = 0  # training-mode forwards run so far without an explicit seed

    @torch.compiler.disable  # a plain int read and write; compiled code would recompile at every new value
    def next_step_seed(self) -> int:
        """The seed of this forward: ``seed_counter * world_size + rank``, so that the processes of a
        distributed run draw differently. In training mode the counter then moves on by one; in eval mode it
        stays (an evaluation between steps does not shift the training stream)."""
        seed = self.seed_counter * distributed.world_size() + distributed.rank()
        if self.training:
            self.seed_counter += 1
        return seed

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + SEED_COUNTER_KEY] = torch.tensor(self.seed_counter, dtype=torch.int64)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Taken out before the module's own loading, which would report it as unexpected; when it is absent
        # (a checkpoint from before the counter) nothing is missing and the counter keeps its value.
        counter = state_dict.pop(prefix + SEED_COUNTER_KEY, None)
        if counter is not None:
            self.seed_counter = int(counter)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
