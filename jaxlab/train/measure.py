"""What the train step measures besides the loss: the weight diagnostics of the optimizer
study (AdamP vs AdamW: Heo et al., docs/optimizers.md) and the spectral diagnostic of the
weight-decay study (Fan et al., docs/scaling_rules.md). Both are jittable; the report
(jaxlab.report.weights, jaxlab.report.spectral) reads the keys they log.

weight_stats (in the step when train.weight_stats is on): the mean, over the matrices that
read an RMSNorm output (the parameter schema's `norm_input`, each layer's slice on its
own), of the weight norm |w| and of the effective step |w_new - w| / |w|.

top_singular_values (every train.spectral_every steps, jitted on its own, outside the
step): the top singular value sigma_max of every matrix param, each layer's slice on its
own; under lr-coupled AdamW it settles near sqrt(lr / wd) * d^0.75, and equal values at
two widths mean the sublayer's gain transfers. Metric keys (jaxlab.rundir.records):
  sigma_max/<module>.<param>/<layer>   a matrix under the scanned 'layers' axis, e.g.
                                       sigma_max/attn.wq/0, sigma_max/mlp.w_down/3
  sigma_max/<module>.<param>           a matrix outside it: sigma_max/embed.embedding,
                                       sigma_max/head.kernel
<module>.<param> is the param's path with the 'layers' level dropped. Each weight is
read as a fan-in x fan-out matrix, its fan-in dims from the parameter schema
(jaxlab.models.schema): wq / wk / wv as D x (H*K), wo as (H*K) x D, the embedding as
V x D, the head as D x V. Vectors (norm gains) are skipped. Cost: a full SVD of every
matrix, O(L * D^2 * F) per call (and O(V * D^2) for the embedding / head).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxlab.config.types import ModelConfig
from jaxlab.models import schema
from jaxlab.rundir.records import sigma_key


def matrix_name(path: tuple[str, ...]) -> str:
  """The metric name of a param path: ('layers', 'attn', 'wq') -> 'attn.wq'."""
  return '.'.join(path[1:] if path[:1] == ('layers',) else path)


def top_singular_values(params, cfg: ModelConfig) -> dict[str, jax.Array]:
  """{metric key: sigma_max} (float32 scalars) for every matrix param of Transformer(cfg)
  and every layer slice. Jittable with cfg static (jax.jit(..., static_argnums=1)); a
  changed model (growth) retraces."""
  out = {}

  def one(param: schema.ParamSpec, w, path):
    if not param.is_matrix:
      return
    fan_in, fan_out = param.fan_dims()
    batch = tuple(i for i in range(w.ndim) if i not in fan_in + fan_out)
    w_LxIxO = jnp.transpose(w, batch + fan_in + fan_out)
    L = math.prod(w.shape[i] for i in batch)
    w_LxIxO = w_LxIxO.reshape(L, math.prod(w.shape[i] for i in fan_in), -1)
    s_L = jnp.linalg.svd(w_LxIxO.astype(jnp.float32), compute_uv=False)[:, 0]  # descending
    name = matrix_name(path)
    if param.stacked:
      out.update({sigma_key(name, i): s_L[i] for i in range(L)})
    else:
      out[sigma_key(name)] = s_L[0]

  for path, w in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = schema.dict_keys(path)
    one(schema.spec_at(cfg, names), w, names[1:] if names[:1] == ('params',) else names)
  return out


def weight_stats(old_params, new_params, cfg: ModelConfig) -> dict:
  """{'prenorm_w_norm', 'prenorm_eff_step'} (jnp scalars) over the norm-fed matrices of
  Transformer(cfg); {} if the model has none."""
  norms, steps = [], []

  def one(param, old, new):
    if not (param.norm_input and param.is_matrix):
      return
    axes = tuple(range(1, old.ndim)) if param.stacked else None
    w_norm = jnp.sqrt(jnp.sum(old * old, axis=axes))
    norms.append(jnp.ravel(jnp.sqrt(jnp.sum(new * new, axis=axes))))
    steps.append(jnp.ravel(jnp.sqrt(jnp.sum((new - old) ** 2, axis=axes)) / w_norm))

  schema.map_params(one, old_params, cfg, new_params)
  if not norms:
    return {}
  return {'prenorm_w_norm': jnp.mean(jnp.concatenate(norms)),
          'prenorm_eff_step': jnp.mean(jnp.concatenate(steps))}
