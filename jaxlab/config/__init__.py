"""Configuration, the bottom layer: typed, frozen dataclasses and ConfigError (types.py),
experiment files and `key.sub=value` overrides (loading.py), the relations between fields
(checks.py), and a Hugging Face config.json read as a ModelConfig (hf.py). Imports no jax
and nothing else of jaxlab; the rules that need the model (Step Law's parameter count,
muP's base model, the attention backend's ring block) are jaxlab.train.runnable.resolve's."""
from jaxlab.config.checks import validate
from jaxlab.config.loading import (CONFIG_FILE, EXPERIMENTS_DIR, apply_overrides, flatten,
                                from_dict, load, load_module, load_run_dir,
                                read_config_file, resolve_experiment)
from jaxlab.config.types import (Config, ConfigError, DataConfig, GrowthConfig, MeshConfig,
                                 ModelConfig, OptimConfig, TrainConfig, parse_ranges)

__all__ = ['CONFIG_FILE', 'Config', 'ConfigError', 'DataConfig', 'EXPERIMENTS_DIR',
           'GrowthConfig', 'MeshConfig', 'ModelConfig', 'OptimConfig', 'TrainConfig',
           'apply_overrides', 'flatten', 'from_dict', 'load', 'load_module', 'load_run_dir',
           'parse_ranges', 'read_config_file', 'resolve_experiment', 'validate']
