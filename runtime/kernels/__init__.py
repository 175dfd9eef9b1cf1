"""Quantized weight matrices and the fused kernels that multiply by them."""
from .matrix import QuantMatrix, KernelError

__all__ = ["QuantMatrix", "KernelError"]
