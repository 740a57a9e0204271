"""NLPO's top-p action mask and masked log-probs (pgx_lab/estimators/nlpo.py): hand-computed masks,
a numpy port of RL4LMs' `learned_top_p` processor, renormalised log-probs, degenerate rows
(all -inf logits, all-masked rows, invalid positions) with finite values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgx_lab.estimators import nlpo
from pgx_lab.estimators import reference

# Probabilities that are exact in binary, so the cumulative sums carry no rounding.
PROBS = np.array([0.125, 0.5, 0.125, 0.25])     # ranks: 1, 3, then 0 and 2 (tie, lower id first)


def _mask(p, **kw):
  return np.asarray(nlpo.top_p_action_mask(jnp.log(jnp.asarray(PROBS)), p, **kw))


def test_top_p_mask_by_hand():
  # Sorted 0.5, 0.25, 0.125, 0.125; mass above each: 0, 0.5, 0.75, 0.875; kept iff <= p.
  np.testing.assert_array_equal(_mask(0.4), [False, True, False, False])
  np.testing.assert_array_equal(_mask(0.5), [False, True, False, True])   # 0.5 does not exceed
  np.testing.assert_array_equal(_mask(0.7), [False, True, False, True])
  np.testing.assert_array_equal(_mask(0.75), [True, True, False, True])   # stable tie: id 0
  np.testing.assert_array_equal(_mask(1.0), [True, True, True, True])
  np.testing.assert_array_equal(_mask(0.1, min_tokens_to_keep=3), [True, True, False, True])
  np.testing.assert_array_equal(_mask(0.4, always_allow=jnp.array([0, 0, 1, 0])),
                                [False, True, True, False])


def _rl4lms_top_p(logits, top_p, min_tokens_to_keep=1):
  """numpy port of MaskLogitsProcessorCasualLM (learned_top_p): True = allowed."""
  order = np.argsort(-logits, axis=-1, kind="stable")
  s = np.take_along_axis(logits, order, axis=-1)
  p = np.exp(s - s.max(-1, keepdims=True))
  cum = np.cumsum(p / p.sum(-1, keepdims=True), axis=-1)
  remove = cum > top_p
  if min_tokens_to_keep > 1:
    remove[..., :min_tokens_to_keep - 1] = False
  remove[..., 1:] = remove[..., :-1].copy()
  remove[..., 0] = False
  out = np.zeros_like(remove)
  np.put_along_axis(out, order, remove, axis=-1)
  return ~out


@pytest.mark.parametrize("top_p,keep", [(0.3, 1), (0.9, 1), (0.9, 3), (0.6, 2)])
def test_top_p_mask_matches_a_port_of_rl4lms(top_p, keep):
  logits = np.random.default_rng(0).normal(size=(64, 11)).astype(np.float64) * 2
  got = nlpo.top_p_action_mask(jnp.asarray(logits, jnp.float32), top_p, min_tokens_to_keep=keep)
  want = _rl4lms_top_p(logits, top_p, keep)
  # float32 vs float64 cumulative sums may disagree only where the mass sits within 1e-5 of p.
  np.testing.assert_array_equal(np.asarray(got), want)
  assert np.all(np.asarray(got).sum(-1) >= keep)


def test_top_p_mask_degenerate_rows():
  logits = jnp.array([[-jnp.inf] * 4, [0.0, -jnp.inf, -jnp.inf, -jnp.inf],
                      [1.0, 1.0, -jnp.inf, -jnp.inf]])
  m = np.asarray(nlpo.top_p_action_mask(logits, 0.5))
  # All -inf: uniform, mass above 0, .25, .5, .75 -> three kept; a one-hot row keeps its token;
  # two equal tokens at p = 0.5 keep both, never a zero-probability token.
  np.testing.assert_array_equal(m, [[True, True, True, False], [True, False, False, False],
                                    [True, True, False, False]])


def test_masked_log_softmax_by_hand_and_all_masked_rows():
  logits = jnp.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
  mask = jnp.array([[1, 0, 1, 0], [0, 0, 0, 0]], bool)
  out = np.asarray(nlpo.masked_log_softmax(logits, mask))
  lse = np.log(np.exp(1.0) + np.exp(3.0))
  np.testing.assert_allclose(out[0], [1 - lse, -np.inf, 3 - lse, -np.inf], rtol=1e-6)
  # A row with nothing allowed is read as unmasked: the plain log-softmax.
  np.testing.assert_allclose(out[1], np.asarray(jax.nn.log_softmax(logits[1])), rtol=1e-6)
  # Renormalised probabilities: p_v / sum_{allowed} p, as RL4LMs' Categorical(probs=where(m, p, 0)).
  p = np.exp(np.asarray(logits[0])) / np.exp(np.asarray(logits[0])).sum()
  np.testing.assert_allclose(np.exp(out[0]), np.where([1, 0, 1, 0], p, 0) / (p[0] + p[2]),
                             rtol=1e-6)


def test_masked_entropy_by_hand():
  logits = jnp.array([[0.0, 0.0, 5.0], [0.0, 0.0, 5.0]])
  mask = jnp.array([[1, 1, 0], [0, 0, 0]], bool)
  ent = np.asarray(nlpo.masked_entropy(logits, mask))
  p = np.exp([0.0, 0.0, 5.0]) / np.exp([0.0, 0.0, 5.0]).sum()
  np.testing.assert_allclose(ent, [np.log(2.0), -(p * np.log(p)).sum()], rtol=1e-5)


def test_masked_token_logp_values_and_finite_gradients():
  rng = np.random.default_rng(2)
  logits = jnp.asarray(rng.normal(size=(3, 4, 5)), jnp.float32)
  tokens = jnp.array([[0, 1, 2, 3], [4, 4, 4, 4], [2, 2, 0, 1]], jnp.int32)
  mask = jnp.asarray(rng.random((3, 4, 5)) < 0.5)
  mask = mask.at[jnp.arange(3)[:, None], jnp.arange(4)[None, :], tokens].set(True)
  mask = mask.at[1, 2].set(False)                     # an all-masked row at a valid position
  mask = mask.at[2, 3].set(False).at[2, 3, 0].set(True)   # token 1 disallowed, position invalid
  valid = jnp.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 0]], jnp.float32)
  logp = np.asarray(nlpo.masked_token_logp(logits, mask, tokens, valid))
  z = np.asarray(logits)
  m = np.asarray(mask)
  for b in range(3):
    for t in range(4):
      if not valid[b, t]:
        assert logp[b, t] == 0.0
        continue
      allowed = m[b, t] if m[b, t].any() else np.ones(5, bool)
      want = z[b, t, tokens[b, t]] - np.log(np.exp(z[b, t][allowed]).sum())
      np.testing.assert_allclose(logp[b, t], want, rtol=1e-5, atol=1e-6)
  # PPO ratio at equal params is 1; the gradient of the clipped surrogate is finite everywhere.
  old = nlpo.masked_token_logp(logits, mask, tokens, valid)
  np.testing.assert_allclose(np.asarray(reference.token_ratio(old, old, valid)), 1.0)

  def loss(lg):
    ratio = reference.token_ratio(nlpo.masked_token_logp(lg, mask, tokens, valid), old, valid)
    return jnp.sum(reference.clipped_surrogate_loss(ratio, jnp.ones_like(old)) * valid)

  g = np.asarray(jax.grad(loss)(logits))
  assert np.all(np.isfinite(g))
  # Disallowed logits get no gradient.
  eff = m | ~m.any(-1, keepdims=True)
  assert np.all(g[~eff & (np.asarray(valid)[..., None] > 0)] == 0.0)


def test_disallowed_taken_token_is_minus_inf_with_finite_gradient():
  logits = jnp.array([[[0.0, 1.0, 2.0]]])
  mask = jnp.array([[[True, True, False]]])
  tokens = jnp.array([[2]], jnp.int32)
  assert np.isneginf(np.asarray(nlpo.masked_token_logp(logits, mask, tokens)))[0, 0]
  g = jax.grad(lambda lg: jnp.sum(jnp.exp(nlpo.masked_token_logp(lg, mask, tokens))))(logits)
  assert np.all(np.isfinite(np.asarray(g)))


def test_bad_input_names_the_argument():
  z = jnp.zeros((2, 5))
  with pytest.raises(ValueError, match="`top_p`"):
    nlpo.top_p_action_mask(z, 0.0)
  with pytest.raises(ValueError, match="`top_p`"):
    nlpo.top_p_action_mask(z, 1.5)
  with pytest.raises(ValueError, match="`min_tokens_to_keep`"):
    nlpo.top_p_action_mask(z, 0.9, min_tokens_to_keep=6)
  with pytest.raises(ValueError, match="`mask_logits`"):
    nlpo.top_p_action_mask(jnp.zeros((2, 5), jnp.int32), 0.9)
  with pytest.raises(ValueError, match="`always_allow`"):
    nlpo.top_p_action_mask(z, 0.9, always_allow=jnp.zeros(4))
  with pytest.raises(ValueError, match="`action_mask`"):
    nlpo.masked_log_softmax(z, jnp.ones((2, 4), bool))
  with pytest.raises(ValueError, match="`tokens`"):
    nlpo.masked_token_logp(jnp.zeros((2, 3, 5)), jnp.ones((2, 3, 5), bool),
                           jnp.zeros((2, 4), jnp.int32))
  with pytest.raises(ValueError, match="`logits`"):
    nlpo.masked_token_logp(z, jnp.ones((2, 5), bool), jnp.zeros((2,), jnp.int32))
