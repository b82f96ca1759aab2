"""emofast: find and control emotion circuits in Hugging Face causal LMs.

Install with `pip install --no-build-isolation -e .` after torch (see Makefile): the C++
extension builds against the torch that is already installed.
"""
from setuptools import setup

setup(
    name="emofast",
    version="0.1.0",
    description="Emotion directions, circuits and steering for Hugging Face causal LMs, fast.",
    python_requires=">=3.10",
    packages=["emofast", "emofast.models", "emofast.data", "emofast.report", "emofast.kernels"],
    package_dir={"emofast.kernels": "kernels"},
    package_data={"emofast.data": ["*.jsonl", "*.json", "*.safetensors"]},
    install_requires=[
        "torch", "triton", "transformers>=4.45", "accelerate", "bitsandbytes", "numpy",
        "safetensors", "tqdm", "matplotlib", "gguf",
    ],
    extras_require={"dev": ["pytest", "pytest-benchmark"]},
    entry_points={"console_scripts": ["emofast=emofast.cli:main"]},
)
