"""Per-tensor muP numbers from microsoft/mup 1.0.0 on a torch LLaMA of jaxlab's shapes.
Prints, per tensor: ninf, width_mult, init factor (set_base_shapes' rescale of an SP init),
forward multiplier (MuReadout), MuAdam lr scale, MuSGD lr scale, MuAdamW wd scale."""
import json, sys
import torch, torch.nn as nn
from mup import MuReadout, set_base_shapes, MuAdam, MuSGD, MuAdamW


class Block(nn.Module):
  def __init__(s, D, H, G, K, F):
    super().__init__()
    s.input_layernorm = nn.Parameter(torch.ones(D))
    s.q_proj = nn.Linear(D, H * K, bias=False); s.k_proj = nn.Linear(D, G * K, bias=False)
    s.v_proj = nn.Linear(D, G * K, bias=False); s.o_proj = nn.Linear(H * K, D, bias=False)
    s.post_attention_layernorm = nn.Parameter(torch.ones(D))
    s.gate_proj = nn.Linear(D, F, bias=False); s.up_proj = nn.Linear(D, F, bias=False)
    s.down_proj = nn.Linear(F, D, bias=False)


class Llama(nn.Module):
  def __init__(s, V, D, H, G, K, F, L=1):
    super().__init__()
    s.embed_tokens = nn.Embedding(V, D)
    s.layers = nn.ModuleList([Block(D, H, G, K, F) for _ in range(L)])
    s.norm = nn.Parameter(torch.ones(D))
    s.lm_head = MuReadout(D, V, bias=False)


def numbers(base, target):
  model = Llama(**target)
  with torch.no_grad():
    for p in model.parameters():
      p.fill_(1.0)          # a constant: set_base_shapes' rescale factor can be read off
  set_base_shapes(model, Llama(**base), rescale_params=True)
  out = {}
  for name, p in model.named_parameters():
    inf = p.infshape
    out[name] = dict(ninf=inf.ninf(), width_mult=inf.width_mult(), init_factor=float(p.flatten()[0]))
  out['lm_head.weight']['forward_mult'] = model.lm_head.output_mult / model.lm_head.width_mult()
  lr, wd = 1.0, 1.0
  for opt_name, opt in (('adam', MuAdam(model.parameters(), lr=lr)),
                        ('sgd', MuSGD(model.parameters(), lr=lr)),
                        ('adamw', MuAdamW(model.parameters(), lr=lr, weight_decay=wd))):
    for group in opt.param_groups:
      for p in group['params']:
        name = next(n for n, q in model.named_parameters() if q is p)
        out[name][f'{opt_name}_lr'] = group['lr'] / lr
        if opt_name == 'adamw':
          out[name]['adamw_wd'] = group['weight_decay'] / wd
  return out


CONFIGS = {
    # heads fixed, head_dim scales; d_ff = 4 d explicit
    'heads_fixed': (dict(V=97, D=64, H=4, G=2, K=16, F=256), dict(V=97, D=256, H=4, G=2, K=64, F=1024)),
    # heads scale at a fixed head_dim 16; d_ff = 4 d explicit
    'head_dim_fixed': (dict(V=97, D=64, H=4, G=2, K=16, F=256), dict(V=97, D=256, H=16, G=8, K=16, F=1024)),
    # d_ff by LLaMA's rule at each width: 64*ceil(8d/3/64): 192 at d=64, 704 at d=256
    'llama_dff': (dict(V=97, D=64, H=4, G=2, K=16, F=192), dict(V=97, D=256, H=4, G=2, K=64, F=704)),
}
if __name__ == '__main__':
  print(json.dumps({k: numbers(*v) for k, v in CONFIGS.items()}, indent=1))
