"""Attention kernels: a dispatcher and one reference implementation."""
from jaxlab.kernels.attention import attention, reference_attention

__all__ = ['attention', 'reference_attention']
