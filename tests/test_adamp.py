"""AdamP / SGDP against a plain-NumPy implementation of the reference algorithm, written
from docs/optimizers.md in the reference's layout: weights (out, in), channel = dim 0.
jaxlab's weights are Flax kernels (in, out) (channel = last axis), so every weight goes
in transposed; a scanned (L, in, out) weight is L reference weights.

Both run in float32 (numpy >= 2 keeps float32 arrays float32 against Python scalars);
the operations are the same up to their order (optax applies p + u, the reference
p * (1 - lr wd) - step * perturb), so they differ by rounding only. Weights are drawn with
std 0.25; the largest difference measured over the AdamP cases is 3.6e-7 (6.0e-7 with
std 0.5, where float32 ulps are twice as large); 1e-6 is the issue's bound.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlab.optim.adamp_sgdp import Layout, adamp, fired_fraction, project, sgdp

EPS = 1e-8
STEPS = 20


# ------------------------------------------------------------------ NumPy reference

def _view(x, kind):
  return x.reshape(x.shape[0], -1) if kind == 'channel' else x.reshape(1, -1)


def ref_projection(p, g, perturb, delta, wd_ratio, eps):
  """(perturb, weight-decay factor, fired) for one weight in (out, in, ...) layout."""
  expand = (-1,) + (1,) * (p.ndim - 1)
  for kind in ('channel', 'layer'):
    gv, pv = _view(g, kind), _view(p, kind)
    cos = np.abs((gv * pv).sum(1)) / (np.maximum(np.linalg.norm(gv, axis=1), eps) *
                                      np.maximum(np.linalg.norm(pv, axis=1), eps))
    if cos.max() < delta / math.sqrt(pv.shape[1]):
      norms = np.linalg.norm(pv, axis=1) + eps
      p_n = p / (norms.reshape(expand) if kind == 'channel' else norms[0])
      dots = _view(p_n * perturb, kind).sum(1)
      perturb = perturb - p_n * (dots.reshape(expand) if kind == 'channel' else dots[0])
      return perturb, wd_ratio, True
  return perturb, 1.0, False


class _Ref:
  """The reference's outer loop: per param, a direction from the optimizer's state, the
  projection test for weights (ndim > 1), decoupled decay, then the step."""
  decay_scale = 1.0

  def __init__(self, lr, **hparams):
    self.lr, self.h, self.t, self.state = lr, hparams, 0, {}

  def step(self, params, grads):
    self.t += 1
    lr = self.lr(self.t - 1)
    out, fired = {}, {}
    for k, p in params.items():
      g = grads[k]
      perturb, step_size = self.direction(k, p, g, lr)
      wd_factor, fired[k] = 1.0, False
      if p.ndim > 1:
        perturb, wd_factor, fired[k] = ref_projection(p, g, perturb, self.h['delta'],
                                                      self.h['wd_ratio'], self.h['eps'])
      self.after_projection(k, perturb)
      p = p * (1 - lr * self.h['weight_decay'] * wd_factor * self.decay_scale)
      out[k] = p - step_size * perturb
    return out, fired

  def after_projection(self, k, perturb):
    pass


class RefAdamP(_Ref):
  def __init__(self, lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, delta=0.1,
               wd_ratio=0.1, nesterov=False):
    super().__init__(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, delta=delta,
                     wd_ratio=wd_ratio, nesterov=nesterov)

  def direction(self, k, p, g, lr):
    b1, b2 = self.h['b1'], self.h['b2']
    m0, v0 = self.state.get(k, (np.zeros_like(p), np.zeros_like(p)))
    m, v = m0 * b1 + (1 - b1) * g, v0 * b2 + (1 - b2) * g * g
    self.state[k] = (m, v)
    denom = np.sqrt(v) / math.sqrt(1 - b2 ** self.t) + self.h['eps']
    perturb = (b1 * m + (1 - b1) * g) / denom if self.h['nesterov'] else m / denom
    return perturb, lr / (1 - b1 ** self.t)


class RefSGDP(_Ref):
  def __init__(self, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
               eps=1e-8, delta=0.1, wd_ratio=0.1):
    super().__init__(lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                     nesterov=nesterov, eps=eps, delta=delta, wd_ratio=wd_ratio)
    self.decay_scale = 1 / (1 - momentum)

  def direction(self, k, p, g, lr):
    mom = self.h['momentum']
    buf = self.state.get(k, np.zeros_like(p)) * mom + (1 - self.h['dampening']) * g
    self.state[k] = buf
    return (g + mom * buf if self.h['nesterov'] else buf), lr

  def after_projection(self, k, perturb):
    if not self.h['nesterov']:   # the reference projects its momentum buffer in place
      self.state[k] = perturb


# --------------------------------------------------------------- the weights and grads

def gradient(kind, p, rng):
  """A gradient for a weight in reference layout: 'channel' orthogonal to every row of
  p (a scale-invariant weight), 'layer' orthogonal to p only as a whole, 'plain' with a
  radial part (not scale-invariant)."""
  r = rng.standard_normal(p.shape)
  if kind == 'channel':
    pv, rv = _view(p, 'channel'), _view(r, 'channel')
    coef = (rv * pv).sum(1, keepdims=True) / (pv * pv).sum(1, keepdims=True)
    return (rv - coef * pv).reshape(p.shape)
  if kind == 'layer':
    return r - (r * p).sum() / (p * p).sum() * p
  return r + p / np.sqrt((p * p).mean())     # |cos| ~ 0.7 per row


# name -> (jaxlab shape, kind(s), how a jaxlab array maps to reference weights)
CASES = {
    'inv': ((12, 6), 'channel'),
    'layer_inv': ((12, 6), 'layer'),
    'plain': ((12, 6), 'plain'),
    'bias': ((6,), 'plain'),
    'scanned': ((2, 12, 6), ('channel', 'plain')),      # layer 0 invariant, layer 1 not
    'attn': ((8, 2, 4), 'channel'),                      # (d, heads, head_dim)
}
LAYOUTS = {'inv': Layout((), (1,)), 'layer_inv': Layout((), (1,)), 'plain': Layout((), (1,)),
           'bias': None, 'scanned': Layout((0,), (2,)), 'attn': Layout((), (1, 2))}


def to_ref(name, x):
  """jaxlab array -> {ref name: reference-layout weight}."""
  if name == 'scanned':
    return {f'scanned{i}': x[i].T for i in range(x.shape[0])}
  if name == 'attn':
    return {'attn': x.reshape(x.shape[0], -1).T}
  return {name: x.T if x.ndim == 2 else x}


def from_ref(name, ref, shape):
  if name == 'scanned':
    return np.stack([ref[f'scanned{i}'].T for i in range(shape[0])])
  if name == 'attn':
    return ref['attn'].T.reshape(shape)
  return ref[name].T if len(shape) == 2 else ref[name]


def kind_of(ref_name):
  if ref_name.startswith('scanned'):
    return CASES['scanned'][1][int(ref_name[-1])]
  return CASES[ref_name][1]


def run_both(make_tx, ref, seed=0):
  rng = np.random.default_rng(seed)
  params = {k: (0.25 * rng.standard_normal(shape)).astype(np.float32)
            for k, (shape, _) in CASES.items()}
  ref_params = {rk: rv for k, v in params.items() for rk, rv in to_ref(k, v).items()}
  jax_params = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
  tx = make_tx()
  state = tx.init(jax_params)
  update = jax.jit(tx.update)
  fired_log = []
  for _ in range(STEPS):
    ref_grads = {k: gradient(kind_of(k), p, rng).astype(np.float32)
                 for k, p in ref_params.items()}
    grads = {k: jnp.asarray(from_ref(k, ref_grads, shape), jnp.float32)
             for k, (shape, _) in CASES.items()}
    updates, state = update(grads, state, jax_params)
    jax_params = optax.apply_updates(jax_params, updates)
    ref_params, fired = ref.step(ref_params, ref_grads)
    fired_log.append((fired, float(fired_fraction(state))))
  for k, (shape, _) in CASES.items():
    np.testing.assert_allclose(np.asarray(jax_params[k]), from_ref(k, ref_params, shape),
                               atol=1e-6, rtol=0, err_msg=k)
  return fired_log


def schedule(step):
  return 1e-2 * (1 - 0.02 * step)


@pytest.mark.parametrize('nesterov', [False, True])
@pytest.mark.parametrize('weight_decay', [0.0, 0.1])
def test_adamp_matches_the_reference(nesterov, weight_decay):
  log = run_both(lambda: adamp(optax.linear_schedule(1e-2, 1e-2 * (1 - 0.02 * STEPS), STEPS),
                               weight_decay=weight_decay, nesterov=nesterov,
                               layout=LAYOUTS),
                 RefAdamP(schedule, weight_decay=weight_decay, nesterov=nesterov))
  fired, fraction = log[-1]
  assert fired == {'inv': True, 'layer_inv': True, 'plain': False, 'bias': False,
                   'scanned0': True, 'scanned1': False, 'attn': True}
  sizes = {'inv': 72, 'layer_inv': 72, 'scanned0': 72, 'attn': 64}
  total = sum(math.prod(shape) for shape, _ in CASES.values())
  assert fraction == pytest.approx(sum(sizes.values()) / total, rel=1e-6)


@pytest.mark.parametrize('nesterov, momentum, dampening', [(False, 0.0, 0.0), (False, 0.9, 0.1),
                                                           (True, 0.9, 0.0)])
@pytest.mark.parametrize('weight_decay', [0.0, 0.1])
def test_sgdp_matches_the_reference(nesterov, momentum, dampening, weight_decay):
  log = run_both(lambda: sgdp(optax.linear_schedule(1e-2, 1e-2 * (1 - 0.02 * STEPS), STEPS),
                              momentum=momentum, dampening=dampening,
                              weight_decay=weight_decay, nesterov=nesterov, layout=LAYOUTS),
                 RefSGDP(schedule, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov))
  assert log[-1][0]['inv'] and not log[-1][0]['plain']


def test_layout_as_a_callable_and_the_default_channel_axis():
  """The default layout (channel = last axis) equals Layout((), (ndim-1,)) and a
  callable returning the layouts equals the pytree."""
  rng = np.random.default_rng(3)
  p = {'w': jnp.asarray(rng.standard_normal((12, 6)), jnp.float32)}
  g = {'w': jnp.asarray(gradient('channel', np.asarray(p['w']).T, rng).T, jnp.float32)}
  outs = []
  for layout in (None, {'w': Layout((), (1,))}, lambda params: {'w': Layout((), (1,))}):
    tx = adamp(1e-2, weight_decay=0.1, layout=layout)
    u, s = tx.update(g, tx.init(p), p)
    outs.append(np.asarray(u['w']))
    assert float(fired_fraction(s)) == 1.0
  np.testing.assert_array_equal(outs[0], outs[1])
  np.testing.assert_array_equal(outs[0], outs[2])


def test_projected_update_has_no_radial_part_per_row():
  rng = np.random.default_rng(1)
  p = jnp.asarray(rng.standard_normal((3, 16, 8)), jnp.float32)   # (L, in, out)
  g = jnp.asarray(np.stack([gradient('channel', np.asarray(p[i]).T, rng).T
                            for i in range(3)]), jnp.float32)
  u = jnp.asarray(rng.standard_normal(p.shape), jnp.float32)
  out, fired = project(u, g, p, Layout((0,), (2,)), delta=0.1, eps=EPS)
  assert np.asarray(fired).reshape(-1).tolist() == [True, True, True]
  p_n = p / jnp.linalg.norm(p, axis=1, keepdims=True)
  radial = jnp.sum(p_n * out, axis=1)                 # one number per (layer, out channel)
  assert float(jnp.max(jnp.abs(radial))) < 1e-5
  assert float(jnp.max(jnp.abs(jnp.sum(p_n * u, axis=1)))) > 0.1    # it was there before


def test_scanned_weight_is_decided_per_layer():
  rng = np.random.default_rng(2)
  p = jnp.asarray(rng.standard_normal((2, 16, 8)), jnp.float32)
  g = jnp.stack([jnp.asarray(gradient('channel', np.asarray(p[0]).T, rng).T),
                 jnp.asarray(gradient('plain', np.asarray(p[1]).T, rng).T)]).astype(jnp.float32)
  u = jnp.asarray(rng.standard_normal(p.shape), jnp.float32)
  out, fired = project(u, g, p, Layout((0,), (2,)), delta=0.1, eps=EPS)
  assert np.asarray(fired).reshape(-1).tolist() == [True, False]
  np.testing.assert_array_equal(np.asarray(out[1]), np.asarray(u[1]))    # layer 1 untouched
  assert not np.allclose(np.asarray(out[0]), np.asarray(u[0]))
  # Seen as one (2*16, 8) weight the radial test would mix the layers; per layer it does not.
  _, whole = project(u, g, p, Layout((), (2,)), delta=0.1, eps=EPS)
  assert not bool(np.asarray(whole).any())


def _toy_run(tx, steps=300, seed=0):
  """A linear layer followed by a normalisation of its output (no gain): the loss does
  not depend on the weight's scale. Returns the weight-norm and effective-step paths."""
  key_w, key_x, key_t = jax.random.split(jax.random.key(seed), 3)
  w = jax.random.normal(key_w, (16, 32)) / 4
  x = jax.random.normal(key_x, (64, 16))
  target = jax.random.normal(key_t, (64, 32))

  def loss(w):
    h = x @ w
    h = (h - h.mean(-1, keepdims=True)) / jnp.sqrt(h.var(-1, keepdims=True) + 1e-6)
    return jnp.mean((h - target) ** 2)

  @jax.jit
  def step(w, s):
    g = jax.grad(loss)(w)
    u, s = tx.update(g, s, w)
    new = optax.apply_updates(w, u)
    return new, s, jnp.linalg.norm(new), jnp.linalg.norm(new - w) / jnp.linalg.norm(w)

  s = tx.init(w)
  norms, eff = [], []
  for _ in range(steps):
    w, s, n, e = step(w, s)
    norms.append(float(n))
    eff.append(float(e))
  return np.array(norms), np.array(eff), float(loss(w))


def test_scale_invariant_toy_adamw_grows_the_norm_adamp_does_not():
  # AdamW: the update is almost orthogonal to the weight, so the norm grows (measured:
  # 5.7 -> 11.4..12.8 in 300 steps) and the effective step falls with it. AdamP removes the
  # radial part; only the second-order growth |dw|^2 is left (measured 5.7 -> 6.0..6.6),
  # and its late effective step stays larger. That late step is a noisy, chaotic path (a
  # rounding change moves one seed's last-50-step mean from 0.0068 to 0.0094), so it is
  # compared averaged over three seeds and the last 150 steps: measured AdamP / AdamW
  # 1.85 at XLA:CPU -O3, 1.74 at the tests' -O0; 1.3 is the bar.
  late = {'adamw': [], 'adamp': []}
  for seed in range(3):
    n0 = float(jnp.linalg.norm(jax.random.normal(jax.random.split(jax.random.key(seed), 3)[0],
                                                 (16, 32)) / 4))
    w_norm, w_eff, _ = _toy_run(optax.adamw(3e-2, weight_decay=0.0), seed=seed)
    p_norm, p_eff, _ = _toy_run(adamp(3e-2, weight_decay=0.0), seed=seed)
    assert w_norm[-1] > 1.5 * n0
    assert p_norm[-1] - n0 < 0.2 * (w_norm[-1] - n0)
    assert w_eff[-50:].mean() < 0.7 * w_eff[:50].mean()
    late['adamw'].append(w_eff[-150:].mean())
    late['adamp'].append(p_eff[-150:].mean())
  assert np.mean(late['adamp']) > 1.3 * np.mean(late['adamw'])
