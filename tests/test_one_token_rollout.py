"""Tests of pgx_lab.estimators.one_token_rollout (OTR, Ming et al. 2025)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgx_lab.estimators import one_token_rollout as otr


def _inputs(seed=0, b=2, t=3, v=5, scale=1.5):
  kz, kt = jax.random.split(jax.random.PRNGKey(seed))
  logits = scale * jax.random.normal(kz, (b, t, v))
  targets = jax.random.randint(kt, (b, t), 0, v)
  mask = jnp.array([[1, 1, 1], [1, 1, 0]], jnp.float32)[:b, :t]
  return logits, targets, mask


def test_hand_computed_loss_from_candidates():
  # pi = (1/2, 1/4, 1/4); target 0; candidates 0, 1, 1; r_neg = -0.1:
  # l = -(1/3) (log 1/2 + 2 * (-0.1) * log 1/4).
  logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]]]))
  targets = jnp.array([[0, 2]])
  cands = jnp.array([[[0, 1, 1], [2, 2, 2]]])
  l0 = -(math.log(0.5) - 0.2 * math.log(0.25)) / 3
  l1 = -math.log(0.5)                           # all three hit
  loss, m = otr.loss_from_candidates(logits, targets, jnp.array([[1, 0]]), cands, r_neg=-0.1)
  np.testing.assert_allclose(loss, l0, rtol=1e-6)
  np.testing.assert_allclose(m["hit_rate"], 1 / 3, rtol=1e-6)
  np.testing.assert_allclose(m["reward"], (1 - 0.2) / 3, rtol=1e-6)
  np.testing.assert_allclose(m["nll"], -math.log(0.5), rtol=1e-6)
  loss2, m2 = otr.loss_from_candidates(logits, targets, jnp.ones((1, 2)), cands, r_neg=-0.1)
  np.testing.assert_allclose(loss2, (l0 + l1) / 2, rtol=1e-6)
  np.testing.assert_allclose(m2["target_prob"], (0.5 + 0.5) / 2, rtol=1e-6)
  np.testing.assert_allclose(m2["num_tokens"], 2.0)


def test_fixed_key_matches_independent_sampling():
  logits, targets, mask = _inputs()
  key = jax.random.PRNGKey(7)
  k, tau, r_neg = 4, 0.7, -0.3
  loss, m = otr.otr_loss(logits, targets, mask, key, num_samples=k, tau=tau, r_neg=r_neg)
  # Independent computation in numpy from the same categorical draws.
  cands = np.asarray(jax.random.categorical(key, logits[:, :, None, :] / tau, shape=(2, 3, k)))
  lp = np.asarray(jax.nn.log_softmax(logits, -1))
  targets, mask = np.asarray(targets), np.asarray(mask)
  tot, hits = 0.0, 0.0
  for b in range(2):
    for t in range(3):
      if mask[b, t] == 0:
        continue
      for a in cands[b, t]:
        r = 1.0 if a == targets[b, t] else r_neg
        tot += -r * lp[b, t, a] / k
        hits += (a == targets[b, t]) / k
  np.testing.assert_allclose(loss, tot / 5, rtol=1e-5)
  np.testing.assert_allclose(m["hit_rate"], hits / 5, rtol=1e-5)


def test_greedy_limit_is_deterministic():
  # tau -> 0: every candidate is the argmax. logits (2, 1, 0): argmax 0.
  logits = jnp.array([[[2.0, 1.0, 0.0], [2.0, 1.0, 0.0]]])
  targets = jnp.array([[1, 0]])
  lp = np.log(np.exp([2.0, 1.0, 0.0]) / np.exp([2.0, 1.0, 0.0]).sum())
  loss, m = otr.otr_loss(logits, targets, jnp.ones((1, 2)), jax.random.PRNGKey(3),
                         num_samples=5, tau=1e-4, r_neg=-0.2)
  # Position 0 misses every time: -(-0.2) log pi(0); position 1 hits: -log pi(0).
  np.testing.assert_allclose(loss, (0.2 * lp[0] - lp[0]) / 2, rtol=1e-5)
  np.testing.assert_allclose(m["hit_rate"], 0.5, rtol=1e-6)


def test_k1_and_point_mass_policy():
  # One allowed token (others -inf) equal to the target: loss 0 for any K, tau.
  logits = jnp.array([[[0.0, -jnp.inf, -jnp.inf]]])
  for k, tau in ((1, 1.0), (3, 5.0)):
    loss, m = otr.otr_loss(logits, jnp.array([[0]]), jnp.ones((1, 1)), jax.random.PRNGKey(0),
                           num_samples=k, tau=tau)
    np.testing.assert_allclose(loss, 0.0, atol=1e-7)
    np.testing.assert_allclose(m["hit_rate"], 1.0)
    g = jax.grad(lambda z: otr.otr_loss(z, jnp.array([[0]]), jnp.ones((1, 1)),
                                        jax.random.PRNGKey(0), num_samples=k, tau=tau)[0])(logits)
    assert np.all(np.isfinite(g))


def test_high_temperature_hit_rate_near_uniform():
  logits = jnp.array([[[4.0, 0.0, 0.0, 0.0]]])
  _, m = otr.otr_loss(logits, jnp.array([[0]]), jnp.ones((1, 1)), jax.random.PRNGKey(1),
                      num_samples=20000, tau=1e4)
  assert abs(float(m["hit_rate"]) - 0.25) < 0.02          # 4.5 standard errors
  _, m1 = otr.otr_loss(logits, jnp.array([[0]]), jnp.ones((1, 1)), jax.random.PRNGKey(1),
                       num_samples=20000, tau=1.0)
  p0 = math.exp(4) / (math.exp(4) + 3)
  assert abs(float(m1["hit_rate"]) - p0) < 0.01


@pytest.mark.parametrize("tau", [1.0, 0.5, 2.0])
def test_monte_carlo_gradient_matches_closed_form(tau):
  logits, targets, mask = _inputs(seed=1)
  r_neg, k, n = -0.3, 4, 4000

  def grad_at(key):
    return jax.grad(lambda z: otr.otr_loss(z, targets, mask, key, k, tau, r_neg)[0])(logits)

  grads = jax.jit(jax.vmap(grad_at))(jax.random.split(jax.random.PRNGKey(11), n))
  mean, se = grads.mean(0), grads.std(0) / math.sqrt(n)
  closed = otr.expected_logit_gradient(logits, targets, mask, tau, r_neg)
  z = np.abs(mean - closed) / (se + 1e-9)
  assert np.all(np.abs(mean - closed) <= 4.5 * se + 1e-6), np.max(z)
  np.testing.assert_allclose(closed[1, 2], 0.0)           # masked position
  if tau != 1.0:
    # The pi-weighted form (q replaced by pi) is not the expectation at tau != 1: the test can fail.
    naive = otr.expected_logit_gradient(logits, targets, mask, 1.0, r_neg)
    assert np.max(np.abs(mean - naive) / (se + 1e-9)) > 8


def test_closed_form_at_tau1_is_spec_formula():
  # -pi(y*) grad log pi(y*) - r_neg sum_{a != y*} pi(a) grad log pi(a), via autodiff of log pi.
  logits, targets, mask = _inputs(seed=2)
  r_neg = -0.1
  pi = jax.nn.softmax(logits, -1)
  w = mask / mask.sum()

  def surrogate(z):
    logp = jax.nn.log_softmax(z, -1)
    r = jnp.where(jax.nn.one_hot(targets, 5) > 0, 1.0, r_neg)
    return -jnp.sum(w * jnp.sum(jax.lax.stop_gradient(pi) * r * logp, -1))

  np.testing.assert_allclose(otr.expected_logit_gradient(logits, targets, mask, 1.0, r_neg),
                             jax.grad(surrogate)(logits), atol=1e-6)
  # and E[loss] at the same logits equals the surrogate's value
  np.testing.assert_allclose(otr.expected_loss(logits, targets, mask, 1.0, r_neg),
                             surrogate(logits), rtol=1e-6)


def test_tau1_expected_gradient_is_scaled_dft_reviewer1():
  # Reviewer 1's reading of Eq. (4): at tau = 1, E[grad] = (1 - beta) x DFT's gradient, i.e.
  # -(1 - beta) pi(y*) (e_{y*} - pi) per position; at tau != 1 the identity breaks.
  logits, targets, mask = _inputs(seed=5)
  r_neg, w = -0.3, np.asarray(mask / mask.sum())[..., None]
  pi = np.asarray(jax.nn.softmax(logits, -1), np.float64)
  onehot = np.eye(5)[np.asarray(targets)]
  py = np.sum(pi * onehot, -1, keepdims=True)
  dft = -(1 - r_neg) * py * (onehot - pi) * w
  np.testing.assert_allclose(otr.expected_logit_gradient(logits, targets, mask, 1.0, r_neg), dft,
                             atol=1e-6)
  hot = otr.expected_logit_gradient(logits, targets, mask, 1.5, r_neg)
  assert np.max(np.abs(np.asarray(hot) - dft)) > 1e-2


def test_all_masked_and_inf_padding_are_finite():
  logits, targets, _ = _inputs()
  mask = jnp.array([[1, 1, 0], [0, 0, 0]], jnp.float32)
  logits = jnp.where(mask[..., None] > 0, logits, -jnp.inf)   # whole padded rows are -inf
  f = lambda z: otr.otr_loss(z, targets, mask, jax.random.PRNGKey(0), 3, 0.8)
  (loss, m), g = jax.value_and_grad(f, has_aux=True)(logits)
  assert np.isfinite(loss) and all(np.isfinite(v) for v in m.values())
  assert np.all(np.isfinite(g)) and np.all(g[1] == 0) and np.all(g[0, 2] == 0)
  assert np.all(np.isfinite(otr.expected_logit_gradient(logits, targets, mask, 0.8)))
  zero = jnp.zeros_like(mask)
  loss0, m0 = otr.otr_loss(logits, targets, zero, jax.random.PRNGKey(0), 3)
  assert float(loss0) == 0.0 and float(m0["num_tokens"]) == 0.0
  assert np.all(np.isfinite(jax.grad(lambda z: otr.otr_loss(z, targets, zero,
                                                             jax.random.PRNGKey(0), 3)[0])(logits)))


def test_log_probs_give_same_loss():
  logits, targets, mask = _inputs(seed=3)
  key = jax.random.PRNGKey(5)
  a = otr.otr_loss(logits, targets, mask, key, 6, 0.9)[0]
  b = otr.otr_loss(jax.nn.log_softmax(logits, -1), targets, mask, key, 6, 0.9)[0]
  np.testing.assert_allclose(a, b, rtol=1e-5)


def test_bad_input_names_argument():
  logits, targets, mask = _inputs()
  key = jax.random.PRNGKey(0)
  cases = [
      (dict(logits=logits[0]), "logits"),
      (dict(logits=logits.astype(jnp.int32)), "logits"),
      (dict(targets=targets.astype(jnp.float32)), "targets"),
      (dict(targets=targets[:, :2]), "targets"),
      (dict(targets=targets + 5), "targets"),
      (dict(mask=mask[:1]), "mask"),
      (dict(num_samples=0), "num_samples"),
      (dict(num_samples=2.0), "num_samples"),
      (dict(tau=0.0), "tau"),
      (dict(tau=float("inf")), "tau"),
      (dict(r_neg=1.0), "r_neg"),
  ]
  for change, name in cases:
    kw = dict(logits=logits, targets=targets, mask=mask, key=key, num_samples=2, tau=1.0,
              r_neg=-0.1)
    kw.update(change)
    with pytest.raises(ValueError, match=name):
      otr.otr_loss(**kw)
  with pytest.raises(ValueError, match="tau"):
    otr.expected_logit_gradient(logits, targets, mask, tau=-1.0)


def test_jit_and_vmap():
  logits, targets, mask = _inputs()
  key = jax.random.PRNGKey(2)
  f = lambda z, y, m, k, tau: otr.otr_loss(z, y, m, k, 3, tau, -0.2)[0]
  eager = f(logits, targets, mask, key, 0.8)
  np.testing.assert_allclose(jax.jit(f)(logits, targets, mask, key, 0.8), eager, rtol=1e-5)
  stacked = lambda x: jnp.stack([x, x])
  keys = jnp.stack([key, key])
  out = jax.vmap(f, in_axes=(0, 0, 0, 0, None))(stacked(logits), stacked(targets),
                                                stacked(mask), keys, 0.8)
  np.testing.assert_allclose(out, jnp.stack([eager, eager]), rtol=1e-5)
  taus = jnp.array([0.8, 1.3])
  out_tau = jax.vmap(f, in_axes=(None, None, None, None, 0))(logits, targets, mask, key, taus)
  np.testing.assert_allclose(out_tau[0], eager, rtol=1e-5)


# ---- the paper's per-demonstration normalisation and the inverse-CDF sampler ----------------


def test_sequence_aggregate_hand_computed():
  # Row 0 trains one token, row 1 two tokens; l_bt hand-computed from pi and the candidates.
  p = np.array([0.5, 0.25, 0.25])
  logits = jnp.log(jnp.array([[p, p], [p, p]]))
  targets = jnp.array([[0, 0], [1, 2]])
  mask = jnp.array([[1, 0], [1, 1]])
  cands = jnp.array([[[0, 1], [0, 0]], [[1, 1], [0, 2]]])
  r = -0.2
  l00 = -(math.log(0.5) + r * math.log(0.25)) / 2
  l10 = -(2 * math.log(0.25)) / 2
  l11 = -(r * math.log(0.5) + math.log(0.25)) / 2
  seq, _ = otr.loss_from_candidates(logits, targets, mask, cands, r, aggregate="sequence")
  tok, _ = otr.loss_from_candidates(logits, targets, mask, cands, r, aggregate="token")
  np.testing.assert_allclose(seq, (l00 + (l10 + l11) / 2) / 2, rtol=1e-6)
  np.testing.assert_allclose(tok, (l00 + l10 + l11) / 3, rtol=1e-6)
  # Reviewer 2's closed form of Eq. (4) at tau = 1: pi(y*) log pi(y*) + beta sum pi(a) log pi(a).
  e = lambda y: -(p[y] * math.log(p[y]) + r * sum(p[a] * math.log(p[a]) for a in range(3)
                                                   if a != y))
  np.testing.assert_allclose(otr.expected_loss(logits, targets, mask, 1.0, r, "sequence"),
                             (e(0) + (e(1) + e(2)) / 2) / 2, rtol=1e-6)


def test_position_weights_degenerate_rows():
  mask = jnp.array([[1, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]])
  w = otr.position_weights(mask, "sequence")
  np.testing.assert_allclose(w, np.array([[1 / 6] * 3 + [0], [0] * 4, [0.5, 0, 0, 0]]), rtol=1e-6)
  np.testing.assert_allclose(otr.position_weights(mask, "token"), np.asarray(mask) / 4.0)
  for agg in otr.AGGREGATES:
    assert np.all(otr.position_weights(jnp.zeros((2, 3)), agg) == 0)


def test_inverse_cdf_matches_independent_numpy_and_skips_inf():
  # -inf at both ends exercises the clipping to the last token of positive probability.
  logits = jnp.array([[[-jnp.inf, 1.0, 0.0, 2.0, -jnp.inf], [0.3, -jnp.inf, 0.1, 0.0, 0.2]]])
  key, k, tau = jax.random.PRNGKey(4), 50000, 1.7
  c = np.asarray(otr.sample_candidates(key, logits, k, tau, sampler="inverse_cdf"))
  u = np.asarray(jax.random.uniform(key, (1, 2, k)))
  q = np.asarray(jax.nn.softmax(logits / tau, -1), np.float64)
  for t in range(2):
    ref = np.minimum(np.searchsorted(np.cumsum(q[0, t]), u[0, t] * q[0, t].sum(), side="right"),
                     np.flatnonzero(q[0, t] > 0).max())
    assert np.mean(ref != c[0, t]) < 1e-3              # float32 vs float64 CDF rounding only
    freq = np.bincount(c[0, t], minlength=5) / k
    assert np.all(freq[q[0, t] == 0] == 0)
    assert np.all(np.abs(freq - q[0, t]) <= 4.5 * np.sqrt(q[0, t] * (1 - q[0, t]) / k) + 1e-9)


def test_monte_carlo_gradient_sequence_aggregate_inverse_cdf():
  logits, targets, _ = _inputs(seed=4)
  mask = jnp.array([[1, 1, 1], [1, 0, 0]], jnp.float32)     # unequal lengths: weights differ
  tau, r_neg, k, n = 1.5, -0.2, 4, 3000

  def grad_at(key):
    return jax.grad(lambda z: otr.otr_loss(z, targets, mask, key, k, tau, r_neg, "sequence",
                                           "inverse_cdf")[0])(logits)

  grads = jax.jit(jax.vmap(grad_at))(jax.random.split(jax.random.PRNGKey(12), n))
  mean, se = grads.mean(0), grads.std(0) / math.sqrt(n)
  closed = otr.expected_logit_gradient(logits, targets, mask, tau, r_neg, "sequence")
  assert np.all(np.abs(mean - closed) <= 4.5 * se + 1e-6)
  # the token-mean closed form is another vector here: the test can tell them apart
  other = otr.expected_logit_gradient(logits, targets, mask, tau, r_neg, "token")
  assert np.max(np.abs(mean - other) / (se + 1e-9)) > 8


def test_sequence_inverse_cdf_degenerate_input_is_finite():
  logits, targets, _ = _inputs()
  mask = jnp.array([[1, 0, 0], [0, 0, 0]], jnp.float32)
  logits = jnp.where(mask[..., None] > 0, logits, -jnp.inf)
  f = lambda z, m: otr.otr_loss(z, targets, m, jax.random.PRNGKey(1), 16, 2.0, -0.1,
                                "sequence", "inverse_cdf")
  (loss, met), g = jax.value_and_grad(f, has_aux=True)(logits, mask)
  assert np.isfinite(loss) and all(np.isfinite(v) for v in met.values())
  assert np.all(np.isfinite(g)) and np.all(g[1] == 0) and np.all(g[0, 1:] == 0)
  loss0, _ = f(logits, jnp.zeros_like(mask))
  assert float(loss0) == 0.0
  assert np.all(np.isfinite(otr.expected_logit_gradient(logits, targets, mask, 2.0, -0.1,
                                                        "sequence")))


def test_bad_aggregate_and_sampler_name_argument():
  logits, targets, mask = _inputs()
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match="aggregate"):
    otr.otr_loss(logits, targets, mask, key, aggregate="mean")
  with pytest.raises(ValueError, match="sampler"):
    otr.otr_loss(logits, targets, mask, key, sampler="multinomial")
  with pytest.raises(ValueError, match="aggregate"):
    otr.expected_logit_gradient(logits, targets, mask, aggregate="batch")
  with pytest.raises(ValueError, match="mask"):
    otr.position_weights(mask[0], "sequence")
