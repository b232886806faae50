"""Triton kernels of electra-fast, installed as ``electra_fast.kernels``.

Only ``@triton.jit`` kernels and thin launchers that take and return tensors live here: no nn.Module, no
autograd, no transformers import. Each kernel module registers the constexpr configurations it launches
with in ``kernels.registry`` so the AOT compile test can build them for sm_80 and sm_90a.
"""
