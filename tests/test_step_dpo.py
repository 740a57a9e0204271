"""Step-level DPO of MCTS-DPO: pair construction, suffix masks, conservative smoothing, losses.

Hand example for the loss (P = 2, T = 4, beta = 0.5), prefix tokens carry large log-ratios that
must not count:
  pair 0: d = 1, chosen length 3, rejected length 4
    chosen   logp [-5, -1, -2, -inf]  ref [-7, -1.5, -2.5, -inf]  suffix ratio (-3) - (-4) = 1
    rejected logp [-5, -1, -1, -1]    ref [-7, -1, -0.5, -0.5]    suffix ratio (-3) - (-2) = -1
    h = 2; visits N_w = 3, N_l = 1: c = 1 / (1 + 1/3) = 3/4, eps = 1/4
  pair 1: d = 2, both length 4
    chosen   logp [-3, -3, -0.5, -0.5] ref [-1] * 4   suffix ratio (-1) - (-2) = 1
    rejected logp [-3, -3, -1, -3]     ref [-1] * 4   suffix ratio (-4) - (-2) = -2
    h = 3; visits N_w = 4, N_l = 8: c = 1 / (1 + 2) = 1/3, eps = min(2/3, 1/2) = 1/2
Token-mean (IPO) ratios: pair 0: 1/2 and -1/3 (h = 5/6); pair 1: 1/2 and -1 (h = 3/2).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgx_lab import types
from pgx_lab.estimators.preference import step_dpo

INF = np.inf


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def _lsig(x):
  return -math.log1p(math.exp(-x))


def _example():
  chosen_mask = _f32([[0, 1, 1, 0], [0, 0, 1, 1]])
  rejected_mask = _f32([[0, 1, 1, 1], [0, 0, 1, 1]])
  logp_w = _f32([[-5, -1, -2, -INF], [-3, -3, -0.5, -0.5]])
  ref_w = _f32([[-7, -1.5, -2.5, -INF], [-1, -1, -1, -1]])
  logp_l = _f32([[-5, -1, -1, -1], [-3, -3, -1, -3]])
  ref_l = _f32([[-7, -1, -0.5, -0.5], [-1, -1, -1, -1]])
  batch = types.PairBatch(chosen_mask, rejected_mask, ref_w, ref_l)
  return logp_w, logp_l, batch, _f32([3, 4]), _f32([1, 8])


def test_conservative_smoothing_hand_values():
  n_w = _f32([4, 0, 1, 10, 3, 4])
  n_l = _f32([2, 0, 5, 1, 1, 8])
  # c = 1/(1 + N_l / max(1, N_w)): 2/3, 1, 1/6, 10/11, 3/4, 1/3.
  expected = [1 / 3, 0.0, 0.5, 1 / 11, 0.25, 0.5]
  np.testing.assert_allclose(step_dpo.conservative_smoothing(n_w, n_l), expected, rtol=1e-6)


def test_conservative_loss_hand_values():
  logp_w, logp_l, batch, n_w, n_l = _example()
  loss, m = step_dpo.step_dpo_loss(logp_w, logp_l, batch, n_w, n_l, beta=0.5)
  l0 = -0.75 * _lsig(1.0) - 0.25 * _lsig(-1.0)
  l1 = -0.5 * _lsig(1.5) - 0.5 * _lsig(-1.5)
  np.testing.assert_allclose(loss, (l0 + l1) / 2, rtol=1e-6)
  np.testing.assert_allclose(m["label_smoothing"], 0.375, rtol=1e-6)
  np.testing.assert_allclose(m["margin"], 1.25, rtol=1e-6)
  # Standard step DPO, and only the valid pair counted.
  loss, m = step_dpo.step_dpo_loss(logp_w, logp_l, batch, n_w, n_l, beta=0.5,
                                   conservative=False)
  np.testing.assert_allclose(loss, -(_lsig(1.0) + _lsig(1.5)) / 2, rtol=1e-6)
  loss, m = step_dpo.step_dpo_loss(logp_w, logp_l, batch, n_w, n_l, jnp.array([True, False]),
                                   beta=0.5)
  np.testing.assert_allclose(loss, l0, rtol=1e-6)
  assert float(m["num_pairs"]) == 1.0


def test_ipo_hand_values():
  logp_w, logp_l, batch, n_w, n_l = _example()
  loss, _ = step_dpo.step_dpo_loss(logp_w, logp_l, batch, n_w, n_l, beta=0.5, loss_type="ipo")
  np.testing.assert_allclose(loss, ((5 / 6 - 1) ** 2 + (1.5 - 1) ** 2) / 2, rtol=1e-5)
  loss, _ = step_dpo.step_dpo_loss(logp_w, logp_l, batch, n_w, n_l, beta=0.5, loss_type="ipo",
                                   length_normalize=False)
  np.testing.assert_allclose(loss, ((2 - 1) ** 2 + (3 - 1) ** 2) / 2, rtol=1e-6)


def test_gradient_vanishes_on_the_shared_prefix():
  logp_w, logp_l, batch, n_w, n_l = _example()
  logp_w = jnp.where(jnp.isinf(logp_w), -1.0, logp_w)
  g_w, g_l = jax.grad(lambda a, b: step_dpo.step_dpo_loss(a, b, batch, n_w, n_l)[0],
                      argnums=(0, 1))(logp_w, logp_l)
  np.testing.assert_array_equal(np.asarray(g_w) != 0, np.asarray(batch.chosen_mask) > 0)
  np.testing.assert_array_equal(np.asarray(g_l) != 0, np.asarray(batch.rejected_mask) > 0)


def test_build_pairs_hand_example():
  # Sibling set 0: prefix [1, 2]; the highest-Q child is 1, the lowest 2; they diverge at t = 2.
  # Sibling set 1: the two extreme children share [1, 2, 3] and diverge inside the step (t = 3).
  # Sibling set 2: only one child available -> invalid.  Set 3: Q tie -> invalid when strict.
  tokens = jnp.array([
      [[1, 2, 3, 1], [1, 2, 0, 1], [1, 2, 3, 2]],
      [[1, 2, 3, 0], [1, 2, 3, 2], [1, 2, 3, 2]],
      [[5, 5, 0, 0], [5, 5, 1, 0], [5, 5, 2, 0]],
      [[0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 3, 3]]], jnp.int32)
  lengths = jnp.array([[4, 4, 4], [4, 4, 4], [3, 3, 3], [4, 4, 4]], jnp.int32)
  q = _f32([[0.5, 0.9, 0.1], [0.2, 0.8, 0.3], [0.2, 0.8, 0.3], [0.5, 0.5, 0.5]])
  visits = jnp.array([[3, 5, 2], [1, 6, 2], [1, 6, 0], [2, 2, 2]], jnp.int32)
  avail = jnp.array([[1, 1, 1], [1, 1, 1], [0, 1, 0], [1, 1, 1]], bool)
  pairs = step_dpo.build_pairs(tokens, lengths, q, visits, avail)
  np.testing.assert_array_equal(pairs.valid, [True, True, False, False])
  np.testing.assert_array_equal(pairs.chosen_tokens[:2], [[1, 2, 0, 1], [1, 2, 3, 2]])
  np.testing.assert_array_equal(pairs.rejected_tokens[:2], [[1, 2, 3, 2], [1, 2, 3, 0]])
  np.testing.assert_array_equal(pairs.divergence[:2], [2, 3])
  np.testing.assert_array_equal(pairs.chosen_mask[:2], [[0, 0, 1, 1], [0, 0, 0, 1]])
  np.testing.assert_array_equal(pairs.rejected_mask[:2], [[0, 0, 1, 1], [0, 0, 0, 1]])
  np.testing.assert_array_equal(pairs.chosen_visits[:2], [5, 6])
  np.testing.assert_array_equal(pairs.rejected_visits[:2], [2, 1])
  loose = step_dpo.build_pairs(tokens, lengths, q, visits, avail, strict=False)
  np.testing.assert_array_equal(loose.valid, [True, True, False, True])


def test_pairs_share_exactly_their_prefix_random():
  key = jax.random.key(0)
  k1, k2, k3, k4 = jax.random.split(key, 4)
  p, k, t = 64, 3, 8
  prefix_len = jax.random.randint(k1, (p,), 0, 6)
  prefix = jax.random.randint(k2, (p, 1, t), 0, 3)
  steps = jax.random.randint(k3, (p, k, t), 0, 3)
  pos = jnp.arange(t)
  tokens = jnp.where(pos < prefix_len[:, None, None], prefix, steps)
  lengths = jnp.broadcast_to(jnp.minimum(prefix_len + 2, t)[:, None], (p, k))
  tokens = jnp.where(pos < lengths[..., None], tokens, 0)
  q = jax.random.uniform(k4, (p, k))
  pairs = step_dpo.build_pairs(tokens, lengths, q, jnp.ones((p, k), jnp.int32),
                               jnp.ones((p, k), bool))
  for i in np.flatnonzero(np.asarray(pairs.valid)):
    d = int(pairs.divergence[i])
    cw, cl = np.asarray(pairs.chosen_tokens[i]), np.asarray(pairs.rejected_tokens[i])
    np.testing.assert_array_equal(cw[:d], cl[:d])
    assert cw[d] != cl[d]
    assert d >= int(prefix_len[i])
    expected = (np.arange(t) >= d) & (np.arange(t) < int(lengths[i, 0]))
    np.testing.assert_array_equal(pairs.chosen_mask[i], expected)
    np.testing.assert_array_equal(pairs.rejected_mask[i], expected)
  # Invalid pairs: equal sequences (nothing to prefer) or a Q tie.
  for i in np.flatnonzero(~np.asarray(pairs.valid)):
    same = np.array_equal(pairs.chosen_tokens[i], pairs.rejected_tokens[i])
    assert same or float(pairs.chosen_q[i]) == float(pairs.rejected_q[i])
  assert int(np.sum(pairs.valid)) > p // 2


def test_degenerate_input_is_finite():
  logp_w, logp_l, batch, n_w, n_l = _example()
  loss, m = step_dpo.step_dpo_loss(logp_w, logp_l, batch, n_w, n_l, jnp.zeros((2,), bool))
  assert float(loss) == 0.0 and float(m["num_pairs"]) == 0.0
  zero = jnp.zeros_like(batch.chosen_mask)
  empty = types.PairBatch(zero, zero, batch.ref_chosen_logp, batch.ref_rejected_logp)
  for lt in ("sigmoid", "ipo"):
    loss, m = step_dpo.step_dpo_loss(logp_w, logp_l, empty, _f32([0, 0]), _f32([0, 0]),
                                     loss_type=lt)
    assert np.isfinite(float(loss)) and all(np.isfinite(float(v)) for v in m.values())
  pairs = step_dpo.build_pairs(jnp.zeros((2, 2, 3), jnp.int32), jnp.zeros((2, 2), jnp.int32),
                               jnp.zeros((2, 2)), jnp.zeros((2, 2)), jnp.zeros((2, 2), bool))
  assert not np.any(pairs.valid)


def test_bad_input():
  logp_w, logp_l, batch, n_w, n_l = _example()
  with pytest.raises(ValueError, match="loss_type"):
    step_dpo.step_dpo_loss(logp_w, logp_l, batch, n_w, n_l, loss_type="hinge2")
  with pytest.raises(ValueError, match="beta"):
    step_dpo.step_dpo_loss(logp_w, logp_l, batch, n_w, n_l, beta=0.0)
  with pytest.raises(ValueError, match="rejected_visits"):
    step_dpo.step_dpo_loss(logp_w, logp_l, batch, n_w, n_l[:1])
  with pytest.raises(ValueError, match="valid"):
    step_dpo.step_dpo_loss(logp_w, logp_l, batch, n_w, n_l, jnp.ones((3,), bool))
  with pytest.raises(ValueError, match="logp_rejected"):
    step_dpo.step_dpo_loss(logp_w, logp_l[:, :3], batch, n_w, n_l)
  tokens = jnp.zeros((2, 3, 4), jnp.int32)
  ok = dict(candidate_lengths=jnp.zeros((2, 3), jnp.int32), qvalues=jnp.zeros((2, 3)),
            visits=jnp.zeros((2, 3)), available=jnp.ones((2, 3), bool))
  with pytest.raises(ValueError, match="candidate_tokens"):
    step_dpo.build_pairs(tokens.astype(jnp.float32), **ok)
  with pytest.raises(ValueError, match="candidate_tokens"):
    step_dpo.build_pairs(tokens[:, :1], **{k: v[:, :1] for k, v in ok.items()})
  with pytest.raises(ValueError, match="qvalues"):
    step_dpo.build_pairs(tokens, **dict(ok, qvalues=jnp.zeros((2, 4))))
  with pytest.raises(ValueError, match="qvalues"):
    step_dpo.build_pairs(tokens, **dict(ok, qvalues=jnp.zeros((2, 3), jnp.int32)))


def test_jit_and_vmap():
  logp_w, logp_l, batch, n_w, n_l = _example()
  f = jax.jit(lambda a, b: step_dpo.step_dpo_loss(a, b, batch, n_w, n_l, beta=0.5)[0])
  np.testing.assert_allclose(f(logp_w, logp_l),
                             step_dpo.step_dpo_loss(logp_w, logp_l, batch, n_w, n_l, beta=0.5)[0],
                             rtol=1e-6)
  q = jax.random.uniform(jax.random.key(1), (5, 4, 3))
  tokens = jnp.broadcast_to(jnp.arange(3)[:, None] * jnp.ones((4,), jnp.int32), (5, 4, 3, 4))
  out = jax.jit(jax.vmap(lambda qq, tt: step_dpo.build_pairs(
      tt, jnp.full((4, 3), 4, jnp.int32), qq, jnp.ones((4, 3)), jnp.ones((4, 3), bool))))(q, tokens)
  assert out.chosen_tokens.shape == (5, 4, 4) and out.valid.shape == (5, 4)


def test_refresh_reference_every_n_updates():
  params = {"w": jnp.arange(3.0)}
  ref = {"w": jnp.zeros(3)}
  refresh = jax.jit(step_dpo.refresh_reference, static_argnums=3)
  for n, expect_new in ((1, False), (3, False), (4, True), (8, True), (9, False)):
    out = refresh(params, ref, jnp.asarray(n), 4)
    np.testing.assert_array_equal(out["w"], params["w"] if expect_new else ref["w"])
  with pytest.raises(ValueError, match="refresh_every"):
    step_dpo.refresh_reference(params, ref, jnp.asarray(1), 0)
