"""Attention kernels: the dispatch table and chooser (dispatch.py), the one XLA reference
(reference.py), jaxlab's Pallas kernel (flash.py), and ring attention (ring_*.py)."""
from jaxlab.kernels.dispatch import attention
from jaxlab.kernels.flash import flash_attention
from jaxlab.kernels.reference import reference_attention

__all__ = ['attention', 'flash_attention', 'reference_attention']
