"""Tiny random Hugging Face models and tokenizers for the interop tests, made locally with
transformers + torch's CPU wheel (test-only dependencies) and save_pretrained: nothing is
downloaded (HF_HUB_OFFLINE=1).

Weights are redrawn at scales that make every tensor matter (transformers' init, std 0.02
and unit gains, leaves the logits nearly uniform): matrices std fan_in^-1/2, the embedding
std 1, norm gains 1 + 0.3 N(0, 1). Float32 unless asked.
"""
from __future__ import annotations

import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_VERBOSITY', 'error')

import numpy as np  # noqa: E402

SIZES = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
             max_position_embeddings=64)


def randomize(model, seed: int = 0):
  import torch
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1:
        p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
      elif 'embed_tokens' in name:
        p.copy_(torch.randn(p.shape, generator=gen))
      else:
        p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
  return model


def make_model(path, arch: str = 'llama', seed: int = 0, dtype: str = 'float32',
               max_shard_size: str | None = None, **overrides):
  """A random tiny `arch` ('llama' | 'mistral' | 'qwen3') model saved to `path`."""
  import torch
  import transformers
  kwargs = dict(SIZES, **overrides)
  if arch == 'llama':
    cfg, cls = transformers.LlamaConfig(**kwargs), transformers.LlamaForCausalLM
  elif arch == 'mistral':
    kwargs.setdefault('sliding_window', None)
    cfg, cls = transformers.MistralConfig(**kwargs), transformers.MistralForCausalLM
  else:
    cfg, cls = transformers.Qwen3Config(**kwargs), transformers.Qwen3ForCausalLM
  torch.manual_seed(seed)
  model = randomize(cls(cfg), seed)
  if dtype == 'bfloat16':
    model = model.to(torch.bfloat16)
  extra = {'max_shard_size': max_shard_size} if max_shard_size else {}
  model.save_pretrained(path, **extra)
  return path


def hf_logits(path, tokens_BxT: np.ndarray) -> np.ndarray:
  """transformers' float32 logits of the model at `path` (eager attention)."""
  import torch
  import transformers
  model = transformers.AutoModelForCausalLM.from_pretrained(
      path, dtype=torch.float32, attn_implementation='eager')
  model.eval()
  with torch.no_grad():
    return model(torch.as_tensor(np.asarray(tokens_BxT), dtype=torch.long)).logits.numpy()


def jax_logits(cfg, params, tokens_BxT: np.ndarray) -> np.ndarray:
  from jaxlab.models import Transformer
  return np.asarray(Transformer(cfg).apply({'params': params}, np.asarray(tokens_BxT)))


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
  """max |a - ref| / max |ref|."""
  return float(np.max(np.abs(a - ref)) / np.max(np.abs(ref)))


TEXT = ('The quick brown fox jumps over the lazy dog. A stitch in time saves nine. '
        'Pack my box with five dozen liquor jugs. How vexingly quick daft zebras jump! ')


def make_tokenizer(path, vocab_size: int = 120, bos: str | None = '<s>', eos: str = '</s>'):
  """A small byte-level BPE tokenizer (the `tokenizers` library) trained on TEXT, saved as
  tokenizer.json + tokenizer_config.json (transformers' PreTrainedTokenizerFast)."""
  import tokenizers
  import transformers
  from tokenizers import decoders, models, pre_tokenizers, trainers
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  special = [t for t in (bos, eos) if t]
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator([TEXT] * 4, trainer)
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos,
                                              eos_token=eos)
  fast.save_pretrained(path)
  return path
