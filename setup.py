import sys

from setuptools import setup

# Floors are versions a test has run on: .ci/run's second leg installs exactly these floors (.ci/floors.py) and
# runs the kernel tests under them. torch is the exception: its 2.11 floor is the GPU machine's version
# (benchmarks/gpu_check.sh runs the suite's CUDA tests there); the CI legs run the 2.13 CPU build, the only CPU
# build these machines can install. Code newer than torch 2.11 needs an explicit fallback.
install_requires = [
    "torch>=2.11",
    "transformers>=5.17.0",
    "tokenizers>=0.23.1",
    "safetensors>=0.8.0",
    "numpy>=1.26.4",
    "tqdm>=4.66.3",
    "matplotlib>=3.8.0",
]
if sys.platform.startswith("linux"):
    install_requires.append("triton>=3.6.0")
HF_REQUIRES = ["accelerate>=1.1.0", "datasets>=2.16"]  # TrainingArguments needs accelerate>=1.1.0

setup(
    name="electra-fast",
    version="0.1.0",
    description="Triton kernels and a PyTorch pre-trainer that make ELECTRA pre-training fast",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # kernels/ installs as electra_fast.kernels: a top-level `kernels` package is taken on PyPI.
    packages=["electra_fast", "electra_fast.kernels", "electra_fast.fused", "electra_fast.cpu",
              "electra_fast.workcount"],
    package_dir={"electra_fast": "electra_fast", "electra_fast.kernels": "kernels"},
    # The tile table the launchers read and the candidates `electra-fast tune` times (kernels/tiles.py).
    package_data={"electra_fast.kernels": ["tile_table.json", "tile_candidates.json"]},
    install_requires=install_requires,
    extras_require={
        # Hugging Face Trainer / accelerate loops (electra_fast.hf_trainer, examples/hf_trainer.py).
        "hf": HF_REQUIRES,
        "test": ["pytest>=7", "pytest-benchmark>=4", "scipy>=1.10", "numpy>=1.24", "ruff>=0.5", *HF_REQUIRES],
        "flash": ["flash-attn>=2.5"],
    },
    entry_points={"console_scripts": ["electra-fast=electra_fast.cli:main"]},
)
