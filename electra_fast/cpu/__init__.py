"""The fast CPU path of each op: the reference's semantics and random bits, computed by fused, compiled loops.

``electra_fast.ops`` runs these on CPU tensors when Triton does not run there (no ``TRITON_INTERPRET``) and
the backend is not forced to ``reference``. Each module here is proven equal to ``electra_fast.reference``
in ``tests/test_cpu_path.py``: the same draws bit for bit, the same samples and dropout masks, the same losses
and gradients to fp32 rounding.
"""
