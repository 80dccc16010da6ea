"""Attention kernels: a dispatcher, the reference implementation and the Pallas kernel."""
from jaxlab.kernels.attention import attention, reference_attention
from jaxlab.kernels.flash_attention import flash_attention

__all__ = ['attention', 'flash_attention', 'reference_attention']
