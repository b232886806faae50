import sys

from setuptools import setup

install_requires = [
    "torch>=2.4",
    "transformers>=4.46",
    "tokenizers>=0.20",
    "tqdm>=4.60",
    "matplotlib>=3.7",
]
if sys.platform.startswith("linux"):
    install_requires.append("triton>=3.1")
HF_REQUIRES = ["accelerate>=1.1.0", "datasets>=2.16"]  # TrainingArguments needs accelerate>=1.1.0

setup(
    name="electra-fast",
    version="0.1.0",
    description="Triton kernels and a PyTorch pre-trainer that make ELECTRA pre-training fast",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # kernels/ installs as electra_fast.kernels: a top-level `kernels` package is taken on PyPI.
    packages=["electra_fast", "electra_fast.kernels", "electra_fast.fused", "electra_fast.cpu"],
    package_dir={"electra_fast": "electra_fast", "electra_fast.kernels": "kernels"},
    install_requires=install_requires,
    extras_require={
        # Hugging Face Trainer / accelerate loops (electra_fast.hf_trainer, examples/hf_trainer.py).
        "hf": HF_REQUIRES,
        "test": ["pytest>=7", "pytest-benchmark>=4", "scipy>=1.10", "numpy>=1.24", "ruff>=0.5", *HF_REQUIRES],
        "flash": ["flash-attn>=2.5"],
    },
    entry_points={"console_scripts": ["electra-fast=electra_fast.cli:main"]},
)
