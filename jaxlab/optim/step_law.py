"""Step Law (Li et al. 2025, "Predictable Scale Part I", arXiv 2503.04715): the
optimal peak learning rate and batch size of LLM pretraining from the model size N
and the token budget D,

  lr_opt = 1.79 * N^-0.713 * D^0.307
  B_opt  = 0.58 * D^0.571  tokens

N is the non-embedding parameter count (`non_embedding_params`), D and B are in tokens
(B / seq_len sequences). These are the constants as the paper states its law; at the
check point N=1e9, D=1e11 they give lr = 1.633e-3 and B = 1.108e6 tokens (the check
values 1.63e-3 and 1.11e6 in docs/scaling_rules.md). The fit's five-digit constants
(exp(0.58631), -0.71292, 0.30749; exp(-0.54354), 0.57094) give lr 1.662e-3 there, 2% higher -- well inside the law's own
scatter, and not what the check values were computed from.

The constants and `steplaw` itself live in jaxlab.config.step_law (no jax), so the fitted
laws of jaxlab.scaling print beside them. `resolve(cfg)` applies the rules optim.lr_rule / train.batch_rule = 'steplaw' to a
Config (jaxlab.train.runnable.resolve calls it, so every run, sweep point, compile and grown run
is resolved before anything compiles); it writes the predictions into optim.lr, train.batch_size and
train.steps, so config.json records both the rule and the values it gave.
"""
from __future__ import annotations

import dataclasses
import math

from jaxlab.config.step_law import steplaw
from jaxlab.config.types import Config, ConfigError, ModelConfig
from jaxlab.models import schema

__all__ = ['steplaw', 'batch_sequences', 'non_embedding_params', 'resolve']


def batch_sequences(batch_tokens: float, seq_len: int) -> int:
  """A batch of `batch_tokens` tokens in sequences of `seq_len`: rounded, at least 1. No
  mesh is considered: a data-parallel mesh needs a multiple of its data x fsdp size
  (checked when the run starts), which may mean rounding this by hand."""
  if seq_len < 1:
    raise ValueError(f'steplaw: seq_len={seq_len!r} must be >= 1')
  return max(1, round(batch_tokens / seq_len))


def non_embedding_params(cfg: ModelConfig) -> int:
  """Step Law's N for a jaxlab Transformer, counted from the parameter schema: every
  param but the token embedding and the output head (tied or untied) -- the attention
  projections, the SwiGLU matrices, the norm gains. The paper's N is non-embedding, and
  (as in Kaplan et al.) the vocabulary projection counts with the embeddings. Under
  growth, cfg is the final (target) model."""
  return schema.count(cfg, tuple(r for r in schema.ROLES if r not in ('embedding', 'output')))


def resolve(cfg: Config) -> Config:
  """Applies the 'steplaw' rules; a config without them is returned unchanged.

  train.batch_rule='steplaw' needs the budget train.tokens > 0 (D) and sets
  train.batch_size = max(1, round(B_opt / data.seq_len)) and
  train.steps = ceil(train.tokens / (train.batch_size x data.seq_len)); the batch is only
  rounded to whole sequences, so a mesh may need a multiple of it (the run checks).
  optim.lr_rule='steplaw' sets optim.lr for D = train.tokens, or, when that is 0,
  train.steps x train.batch_size x data.seq_len. Every value is a function of fields the
  rules do not write (the model, train.tokens, data.seq_len and, without the batch rule,
  train.steps / train.batch_size), so resolving twice -- or reloading a config.json --
  gives the same config.
  """
  o, t, seq_len = cfg.optim, cfg.train, cfg.data.seq_len
  if o.lr_rule != 'steplaw' and t.batch_rule != 'steplaw':
    return cfg
  if t.tokens < 0:
    raise ConfigError(f'train.tokens={t.tokens} must be >= 0 (0: train.steps x '
                      'train.batch_size x data.seq_len)')
  if seq_len < 1:
    raise ConfigError(f'data.seq_len={seq_len} must be >= 1')
  n_params = non_embedding_params(cfg.model)
  if n_params < 1:
    raise ConfigError(f'the model has {n_params} non-embedding parameters; Step Law needs > 0 '
                      '(model.n_layers, model.d_model)')
  if t.batch_rule == 'steplaw':
    if t.tokens <= 0:
      raise ConfigError(f"train.batch_rule='steplaw' needs the token budget train.tokens > 0 "
                        f'(got train.tokens={t.tokens}); e.g. train.tokens=1e9')
    batch = batch_sequences(steplaw(n_params, t.tokens)[1], seq_len)
    t = dataclasses.replace(t, batch_size=batch, steps=math.ceil(t.tokens / (batch * seq_len)))
  if o.lr_rule == 'steplaw':
    budget = t.tokens or t.steps * t.batch_size * seq_len
    if budget < 1:
      raise ConfigError(f"optim.lr_rule='steplaw' needs a token budget > 0: train.tokens="
                        f'{t.tokens}, train.steps={t.steps}, train.batch_size={t.batch_size}')
    o = dataclasses.replace(o, lr=steplaw(n_params, budget)[0])
  return dataclasses.replace(cfg, optim=o, train=t)
