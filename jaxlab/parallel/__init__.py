from jaxlab.parallel.mesh import make_mesh, mesh_shape
from jaxlab.parallel.rules import DEFAULT_RULES, batch_sharding, check_divisible, logical_sharding

__all__ = ['make_mesh', 'mesh_shape', 'DEFAULT_RULES', 'logical_sharding', 'batch_sharding',
           'check_divisible']
