"""A-LoL and its offline baselines (pgx_lab.estimators.offline): hand-computed losses, the
per-example gradient A * clamp(w) * grad S, equalities between variants, bad input, degenerate
input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgx_lab.estimators import offline
from pgx_lab.types import SequenceBatch

NEG_INF = -jnp.inf
# Row 0: two tokens, S = -3, S_ref = -5 (ratio e^2 = 7.39, clamped to 1.9). Row 1: three tokens,
# S = -2, S_ref = -2.5 (ratio e^0.5 = 1.6487, inside [0.1, 1.9]). Position (0, 2) is padding.
LOGP = jnp.array([[-1.0, -2.0, 0.0], [-0.5, -0.5, -1.0]])
REF = jnp.array([[-2.5, -2.5, NEG_INF], [-0.5, -1.0, -1.0]])
MASK = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
E05 = float(np.exp(0.5))


def _batch(adv=(2.0, 3.0), rewards=None):
  return SequenceBatch(mask=MASK, ref_logp=REF, advantages=jnp.array(adv),
                       rewards=None if rewards is None else jnp.array(rewards))


def test_alol_sequence_weight_by_hand():
  loss, m = offline.alol()(LOGP, _batch())
  # -(1/2) [2 * 1.9 * (-3) + 3 * e^0.5 * (-2)]
  np.testing.assert_allclose(loss, (2 * 1.9 * 3 + 3 * E05 * 2) / 2, rtol=1e-6)
  np.testing.assert_allclose(m["clip_fraction"], 0.5, rtol=1e-6)
  np.testing.assert_allclose(m["ratio_max"], np.exp(2.0), rtol=1e-5)


def test_alol_clamps_negative_advantage_to_zero_unless_asked():
  loss, _ = offline.alol()(LOGP, _batch(adv=(2.0, -3.0)))
  np.testing.assert_allclose(loss, 2 * 1.9 * 3 / 2, rtol=1e-6)
  loss, _ = offline.alol(positive=False)(LOGP, _batch(adv=(2.0, -3.0)))
  np.testing.assert_allclose(loss, (2 * 1.9 * 3 - 3 * E05 * 2) / 2, rtol=1e-6)


def test_alol_small_ratio_clamped_below():
  ref = jnp.array([[0.0, 0.0, 0.0], [-0.5, -1.0, -1.0]])  # row 0: ratio e^-3 -> 0.1
  batch = SequenceBatch(mask=MASK, ref_logp=ref, advantages=jnp.array([2.0, 0.0]))
  loss, _ = offline.alol()(LOGP, batch)
  np.testing.assert_allclose(loss, 2 * 0.1 * 3 / 2, rtol=1e-6)


def test_alol_token_mean_option():
  loss, _ = offline.alol(reduce="mean")(LOGP, _batch())
  # Each sequence's token sum divided by its length (2 and 3); the ratio still uses the sum.
  np.testing.assert_allclose(loss, (2 * 1.9 * 3 / 2 + 3 * E05 * 2 / 3) / 2, rtol=1e-6)


def test_alol_seq_token_weights_by_hand():
  loss, _ = offline.alol_seq()(LOGP, _batch())
  # Row 0 token ratios e^1.5 -> 1.9 and e^0.5; row 1: 1, e^0.5, 1.
  row0 = 2 * (1.9 * -1.0 + E05 * -2.0)
  row1 = 3 * (1.0 * -0.5 + E05 * -0.5 + 1.0 * -1.0)
  np.testing.assert_allclose(loss, -(row0 + row1) / 2, rtol=1e-6)


def test_alol_kl_by_hand():
  beta = 0.3
  loss, m = offline.alol_kl(beta=beta)(LOGP, _batch(adv=(2.0, -3.0)))
  # -(1/2)(2 * -3 + 0) + beta * (1/2)((-3 + 5) + (-2 + 2.5))
  np.testing.assert_allclose(loss, 3.0 + beta * 2.5 / 2, rtol=1e-6)
  np.testing.assert_allclose(m["kl_ref_seq"], 1.25, rtol=1e-6)


def test_alol_kl_penalty_gradient():
  beta = 0.3
  batch = _batch(adv=(0.0, 0.0))
  g = jax.grad(lambda lp: offline.alol_kl(beta=beta)(lp, batch)[0])(LOGP)
  np.testing.assert_allclose(g, beta * MASK / 2, rtol=1e-6)


def test_wbc_rlol_rgold_nll_by_hand():
  b = _batch(rewards=(0.5, 1.0))
  np.testing.assert_allclose(offline.wbc()(LOGP, b)[0], (0.5 * 3 + 1.0 * 2) / 2, rtol=1e-6)
  np.testing.assert_allclose(offline.rlol()(LOGP, b)[0], (0.5 * 1.9 * 3 + E05 * 2) / 2, rtol=1e-6)
  np.testing.assert_allclose(offline.nll()(LOGP, b)[0], (3 + 2) / 2, rtol=1e-6)
  p = np.exp(np.asarray(LOGP))
  w = np.maximum(p, 0.1)
  row0 = 0.5 * (w[0, 0] * -1.0 + w[0, 1] * -2.0)
  row1 = 1.0 * np.sum(w[1] * np.asarray(LOGP[1]))
  np.testing.assert_allclose(offline.rgold()(LOGP, b)[0], -(row0 + row1) / 2, rtol=1e-6)
  # The GOLD weight has no gradient: d/dlogp = -R * max(u, p) / B.
  g = jax.grad(lambda lp: offline.rgold()(lp, b)[0])(LOGP)
  np.testing.assert_allclose(g, -np.array([[0.5], [1.0]]) * w * np.asarray(MASK) / 2, rtol=1e-6)


def test_ref_free_equals_wbc_with_advantage_as_reward():
  a = (0.7, 1.3)
  f = lambda est, b: jax.value_and_grad(lambda lp: est(lp, b)[0])(LOGP)
  l1, g1 = f(offline.alol_ref_free(), _batch(adv=a))
  l2, g2 = f(offline.wbc(), SequenceBatch(mask=MASK, rewards=jnp.array(a)))
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  np.testing.assert_allclose(g1, g2, rtol=1e-6)


def _tabular_logp(theta, ctx, y):
  """A tiny tabular policy: theta [C, T, V], logp [B, T] of responses y [B, T]."""
  lp = jax.nn.log_softmax(theta[ctx], axis=-1)
  return jnp.take_along_axis(lp, y[..., None], axis=-1)[..., 0]


@pytest.mark.parametrize("eps", [0.9, 0.2])
def test_alol_gradient_is_advantage_times_clamped_weight_times_grad_s(eps):
  k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(0), 4)
  b, t, v = 6, 4, 3
  theta = jax.random.normal(k1, (3, t, v))
  theta_ref = jax.random.normal(k2, (3, t, v))
  ctx = jnp.array([0, 1, 2, 0, 1, 2])
  y = jax.random.randint(k3, (b, t), 0, v)
  lengths = jnp.array([4, 3, 1, 2, 4, 0])
  mask = (jnp.arange(t)[None] < lengths[:, None]).astype(jnp.float32)
  adv = jax.random.normal(k4, (b,))
  ref_logp = _tabular_logp(theta_ref, ctx, y)
  batch = SequenceBatch(mask=mask, ref_logp=ref_logp, advantages=adv)
  est = offline.alol(eps=eps)
  grad = jax.grad(lambda th: est(_tabular_logp(th, ctx, y), batch)[0])(theta)
  # Independent: per-example Jacobian of S_i, times A_i^+ clamp(w_i) from numpy.
  seq = lambda th: jnp.sum(_tabular_logp(th, ctx, y) * mask, axis=1)
  jac = np.asarray(jax.jacrev(seq)(theta))  # [B, C, T, V]
  s = np.asarray(seq(theta))
  s_ref = np.sum(np.asarray(ref_logp) * np.asarray(mask), axis=1)
  w = np.clip(np.exp(s - s_ref), 1 - eps, 1 + eps)
  coef = np.maximum(np.asarray(adv), 0) * w
  expected = -np.einsum("b,bctv->ctv", coef, jac) / b
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(offline.PRESETS))
def test_finite_on_all_masked_rows_and_inf_padding(name):
  logp = jnp.array([[-1.0, NEG_INF], [NEG_INF, NEG_INF]])
  ref = jnp.array([[-0.5, NEG_INF], [NEG_INF, NEG_INF]])
  mask = jnp.array([[1.0, 0.0], [0.0, 0.0]])
  batch = SequenceBatch(mask=mask, ref_logp=ref, advantages=jnp.array([1.0, 2.0]),
                        rewards=jnp.array([1.0, 2.0]))
  est = offline.PRESETS[name]()
  loss, grad = jax.value_and_grad(lambda lp: est(lp, batch)[0])(logp)
  assert np.isfinite(loss) and np.all(np.isfinite(grad))
  assert np.all(np.asarray(grad)[mask == 0] == 0)
  metrics = est(logp, batch)[1]
  assert all(np.all(np.isfinite(v)) for v in metrics.values())
  # Fully masked batch: loss 0.
  empty = batch.replace(mask=jnp.zeros_like(mask))
  assert float(est(logp, empty)[0]) == 0.0


@pytest.mark.parametrize("build, arg", [
    (lambda: offline.alol(eps=0.0), "eps"),
    (lambda: offline.alol(eps=1.5), "eps"),
    (lambda: offline.alol_seq(eps=-0.1), "eps"),
    (lambda: offline.alol(reduce="avg"), "reduce"),
    (lambda: offline.alol_kl(beta=-1.0), "beta"),
    (lambda: offline.rgold(lower_bound=2.0), "lower_bound"),
    (lambda: offline.rgold(source="values"), "source"),
])
def test_bad_options_raise(build, arg):
  with pytest.raises(ValueError, match=arg):
    build()


def test_bad_batches_raise():
  with pytest.raises(ValueError, match="batch.ref_logp"):
    offline.alol()(LOGP, SequenceBatch(mask=MASK, advantages=jnp.ones(2)))
  with pytest.raises(ValueError, match="batch.advantages"):
    offline.alol()(LOGP, SequenceBatch(mask=MASK, ref_logp=REF))
  with pytest.raises(ValueError, match="batch.advantages"):
    offline.alol()(LOGP, SequenceBatch(mask=MASK, ref_logp=REF, advantages=jnp.ones(3)))
  with pytest.raises(ValueError, match="batch.rewards"):
    offline.wbc()(LOGP, SequenceBatch(mask=MASK))
  with pytest.raises(ValueError, match="batch.ref_logp"):
    offline.alol()(LOGP, SequenceBatch(mask=MASK, ref_logp=REF[:, :2], advantages=jnp.ones(2)))


def test_jit_and_vmap():
  est = offline.alol()
  f = jax.jit(lambda lp, b: est(lp, b)[0])
  np.testing.assert_allclose(f(LOGP, _batch()), est(LOGP, _batch())[0], rtol=1e-6)
  many = jax.vmap(lambda s: est(LOGP * s, _batch())[0])(jnp.array([1.0, 2.0]))
  assert many.shape == (2,)


def test_gold_with_per_token_advantages():
  q = jnp.array([[1.0, -2.0, 5.0], [0.5, 0.0, 2.0]])
  b = SequenceBatch(mask=MASK, advantages=q)
  w = np.maximum(np.exp(np.asarray(LOGP)), 0.2)
  expected = -np.sum(np.asarray(q) * w * np.asarray(LOGP) * np.asarray(MASK)) / 2
  np.testing.assert_allclose(offline.rgold(0.2, source="advantages")(LOGP, b)[0], expected,
                             rtol=1e-6)
