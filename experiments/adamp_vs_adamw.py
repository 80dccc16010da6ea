"""AdamW vs AdamP and SGD vs SGDP (Heo et al., ICLR 2021; docs/optimizers.md) on the embedded
offline corpus, each pair over the same small lr x weight-decay grid, over 3 paired seeds.

  python launch.py sweep adamp_vs_adamw --jobs 2
  python launch.py report runs/adamp_vs_adamw --baseline optim.name=adamw,sgd
      # val losses, weight-norm paths, effective steps, projected share; and AdamP - AdamW,
      # SGDP - SGD at each (lr, weight decay), seed by seed, with 95% CIs
  python launch.py sweep adamp_vs_adamw train.steps=40 name=adamp_smoke --seeds 1  # smoke

Sizes: three seeds of the 18 grid points at 16 x 128 tokens per step would be about 11x
the demo's FLOPs; at 8 x 128 tokens for 400 steps, with one evaluation of the whole
validation split (194k tokens) at the end, they are about 5x (72 min measured with
--jobs 2 on two CPU cores; its results are in the README's optimizer section).

Every run logs, for the norm-preceded matrices (wq, wk, wv, w_gate, w_up, head; each
layer on its own), the mean weight norm and the effective step |dw| / |w|, and under
AdamP / SGDP the share of param entries whose update was projected. Weight decay is
decoupled for AdamW / AdamP / SGDP and L2 (added to the gradient, as torch's SGD) for
SGD; SGDP divides its decay by 1 - momentum, which is what makes the two comparable.
Norm gains are never decayed (the parametrization's mask) and never projected (vectors).
"""
from __future__ import annotations

from jaxlab.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig

SEEDS = 3
GRIDS = {   # optimizer pair -> (lrs, weight decays)
    ('adamw', 'adamp'): ((1e-3, 3e-3), (0.01, 0.1)),
    ('sgd', 'sgdp'): ((0.1, 0.3), (1e-4, 1e-3)),
}


def config() -> Config:
  return Config(
      model=ModelConfig(d_model=128, n_layers=4, n_heads=4, d_ff=512),
      optim=OptimConfig(lr=3e-3, warmup_steps=50, weight_decay=0.1, momentum=0.9),
      data=DataConfig(seq_len=128),
      train=TrainConfig(steps=400, batch_size=8, log_every=10, eval_every=0, weight_stats=True,
                        eval_batches='all', checkpoint_every=200),
  )


# Controls: SGDP whose test never passes (delta ~ 0) is SGD with SGDP's decoupled decay
# (divided by 1 - momentum) instead of L2: it separates what the projection does from
# what the form of the decay does. (AdamP without projection is AdamW exactly.)
CONTROLS = {'sgdp-noproj': (('sgdp', 1e-12), (0.1,), (1e-4, 1e-3))}


def runs(cfg: Config) -> dict[str, list[str]]:
  out = {}
  for names, (lrs, wds) in GRIDS.items():
    for lr in lrs:
      for wd in wds:
        for name in names:
          out[f'{name}_lr{lr:g}_wd{wd:g}'] = [f'optim.name={name}', f'optim.lr={lr}',
                                              f'optim.weight_decay={wd}']
  for label, ((name, delta), lrs, wds) in CONTROLS.items():
    for lr in lrs:
      for wd in wds:
        out[f'{label}_lr{lr:g}_wd{wd:g}'] = [f'optim.name={name}', f'optim.delta={delta}',
                                             f'optim.lr={lr}', f'optim.weight_decay={wd}']
  return out


def which_fire(run_dir: str, n_batches: int = 4) -> list[tuple[str, float]]:
  """For a finished run: each param's share of entries that AdamP's test marks scale-
  invariant at the last checkpoint, with the gradient of a few training batches.

    python experiments/adamp_vs_adamw.py runs/adamp_vs_adamw/adamp_lr0.003_wd0.1/seed0
  """
  import jax
  import jax.numpy as jnp

  from jaxlab import data as data_lib
  from jaxlab.rundir.checkpoint import Checkpointer, checkpoint_dir
  from jaxlab.config import load_run_dir
  from jaxlab.optim import adamp_layout
  from jaxlab.optim.adamp_sgdp import project
  from jaxlab.parallel import make_mesh
  from jaxlab.train.program import build_program
  from jaxlab.train.step import loss_terms

  cfg = load_run_dir(run_dir)
  program = build_program(cfg, make_mesh(cfg.mesh))
  tokenizer = data_lib.make_tokenizer(cfg.data)
  iterator = data_lib.make_train_iterator(cfg.data, tokenizer, cfg.train.batch_size)
  ckpt = Checkpointer(checkpoint_dir(cfg, run_dir), keep=cfg.train.keep_checkpoints)
  state = ckpt.restore(ckpt.all_steps()[-1], program.abstract_state, iterator).state
  ckpt.close()
  layout = adamp_layout(cfg.model)

  def grad_of(batch):
    def loss(p):
      total, count = loss_terms(program.model, p, batch)
      return total / count
    return jax.grad(loss)(state.params)

  shares = {}
  for _ in range(n_batches):
    batch = {k: jnp.asarray(v) for k, v in next(iterator).items()}
    grads = grad_of(batch)
    flat = jax.tree_util.tree_leaves_with_path(state.params)
    for (path, p), g, lay in zip(flat, jax.tree.leaves(grads),
                                 jax.tree.leaves(layout, is_leaf=lambda x: x is None or
                                                 isinstance(x, tuple))):
      _, fired = project(g, g, p, lay, cfg.optim.delta, cfg.optim.eps)
      name = jax.tree_util.keystr(path)
      share = float(jnp.mean(jnp.broadcast_to(fired, p.shape)))
      shares[name] = shares.get(name, 0.0) + share / n_batches
  return sorted(shares.items())


if __name__ == '__main__':
  import sys
  for name, share in which_fire(sys.argv[1]):
    print(f'{share:6.2f}  {name}')
