"""Quantized weight matrices and the fused kernels that multiply by them."""
from .matrix import KernelError, QuantMatrix, StackedMatrix

__all__ = ["QuantMatrix", "StackedMatrix", "KernelError"]
