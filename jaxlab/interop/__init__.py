"""Interoperability with other tools' checkpoints.

  hf         Hugging Face Llama-family checkpoints: load(path) -> (ModelConfig, params),
             save(params, cfg, path) (jaxlab.interop.hf)
  hf_config  config.json <-> ModelConfig, and what it refuses (no jax import)
  export     `launch.py export RUN_DIR --format hf --out DIR`
  grow_hf    `launch.py grow --from hf:DIR ...` (SOLAR / Yi up-scaling, LLaMA-Pro expansion)

Nothing is imported here, so that reading a config (jaxlab.config, model.init=hf:DIR)
does not import jax.
"""
