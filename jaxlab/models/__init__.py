"""Models: the LLaMA-style Transformer and the parametrization table."""
from jaxlab.models import parametrization
from jaxlab.models.transformer import Transformer

__all__ = ['Transformer', 'parametrization']
