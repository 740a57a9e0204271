"""Text2Grad span rewards (pgx_lab.rewards.spans) and KL shaping / control (rewards.kl_control)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgx_lab.estimators import penalties
from pgx_lab.rewards import kl_control
from pgx_lab.rewards import spans


def i32(x):
  return jnp.asarray(x, jnp.int32)


def f32(x):
  return jnp.asarray(x, jnp.float32)


# ---------------------------------------------------------------- alignment


def test_span_to_token_scores_multi_token_words():
  # words: w0 = tokens 0,1; w1 = token 2; w2 = tokens 3,4; token 5 is in no word (-1).
  ws = f32([[1.0, 0.0, -1.0]])
  idx = i32([[0, 0, 1, 2, 2, -1]])
  np.testing.assert_allclose(spans.span_to_token_scores(ws, idx), [[1, 1, 0, -1, -1, 0]])
  mask = f32([[1, 1, 1, 1, 0, 0]])
  np.testing.assert_allclose(spans.span_to_token_scores(ws, idx, mask), [[1, 1, 0, -1, 0, 0]])
  # An index past the last word is "no word" too.
  np.testing.assert_allclose(spans.span_to_token_scores(ws, i32([[3, 2, 7, 0, 1, 1]])),
                             [[0, -1, 0, 1, 0, 0]])


def test_token_to_word_scores_takes_max_over_subtokens():
  ts = f32([[0.5, -1.0, 0.2, -0.3, 7.0, -2.0]])
  idx = i32([[0, 0, 1, 1, -1, 2]])
  np.testing.assert_allclose(spans.token_to_word_scores(ts, idx, 4), [[0.5, 0.2, -2.0, 0.0]])
  # Masking token 0 leaves -1 as word 0's max; an all-masked word gets 0.
  mask = f32([[0, 1, 1, 1, 1, 0]])
  np.testing.assert_allclose(spans.token_to_word_scores(ts, idx, 4, mask), [[-1.0, 0.2, 0.0, 0.0]])


def test_round_trip_word_to_token_to_word():
  key = jax.random.PRNGKey(0)
  ws = jax.random.choice(key, f32([-1.0, 0.0, 1.0]), (3, 5))
  idx = i32([[0, 0, 1, 2, 3, 4, 4], [0, 1, 1, 1, 2, 3, 4], [0, 1, 2, 3, 4, 4, -1]])
  back = spans.token_to_word_scores(spans.span_to_token_scores(ws, idx), idx, 5)
  np.testing.assert_allclose(back, ws)


def test_word_scores_from_spans_and_fallback():
  good = jnp.asarray([[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]], bool)
  bad = jnp.asarray([[0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]], bool)
  word_mask = f32([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 0]])
  s = spans.word_scores_from_spans(good, bad, word_mask)
  # Row 0: good wins on the overlap; row 1: nothing matched, fallback 0.1 on valid words;
  # row 2: its only span is on a masked word, so nothing matched either.
  np.testing.assert_allclose(s, [[1, 1, -1, 0], [0.1, 0.1, 0.1, 0], [0.1, 0.1, 0.1, 0]], rtol=1e-6)
  np.testing.assert_allclose(spans.word_scores_from_spans(good[1:2], bad[1:2], fallback=0.0),
                             [[0, 0, 0, 0]])


def test_positional_critic_names_spans():
  tokens = i32([[1, 2, 3, 0], [1, 2, 3, 0]])
  targets = i32([[1, 2, 0, 0], [1, 2, 0, 0]])
  checked = jnp.asarray([[0, 1, 1, 0], [0, 0, 0, 0]], bool)   # row 1 judges nothing
  idx = i32([[0, 0, 1, 1], [0, 0, 1, 1]])
  out = jax.jit(spans.positional_critic, static_argnums=4)(tokens, targets, checked, idx, 2)
  np.testing.assert_array_equal(out.good, [[True, False], [False, False]])
  np.testing.assert_array_equal(out.bad, [[False, True], [False, False]])
  np.testing.assert_allclose(out.word_scores, [[1, -1], [0.1, 0.1]], rtol=1e-6)
  # A word with one right and one wrong judged token is a poor span.
  out = spans.positional_critic(i32([[1, 9]]), i32([[1, 2]]), jnp.ones(2, bool), i32([[0, 0]]), 1)
  np.testing.assert_allclose(out.word_scores, [[-1.0]])
  # A masked judged token is not judged.
  out = spans.positional_critic(i32([[1, 9]]), i32([[1, 2]]), jnp.ones(2, bool), i32([[0, 0]]), 1,
                                mask=f32([[1, 0]]))
  np.testing.assert_allclose(out.word_scores, [[1.0]])


# ---------------------------------------------------------------- KL shaping


def test_kl_shaped_rewards_hand_computed():
  c = f32([[1.0, 0.0, -1.0], [0.1, 0.1, 0.0]])
  logp = f32([[-0.5, -1.0, -2.0], [-1.0, -1.0, -1.0]])
  ref = f32([[-1.0, -1.0, -1.0], [-0.5, -1.5, -1.0]])
  mask = f32([[1, 1, 1], [1, 1, 0]])
  k1 = penalties.kl_estimate(logp, ref, mask, "k1")          # TRL "kl": logp - ref_logp
  np.testing.assert_allclose(k1, [[0.5, 0.0, -1.0], [-0.5, 0.5, 0.0]])
  r = kl_control.kl_shaped_rewards(c, k1, 0.2, mask)
  np.testing.assert_allclose(r, [[0.9, 0.0, -0.8], [0.2, 0.0, 0.0]], atol=1e-6)
  # The controller input: mean over rows of summed KL = ((0.5 + 0 - 1) + (-0.5 + 0.5)) / 2.
  np.testing.assert_allclose(kl_control.mean_sequence_kl(k1, mask), -0.25, atol=1e-6)


def test_full_kl_closed_form():
  p = np.array([[[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]]])
  q = np.array([[[1 / 3, 1 / 3, 1 / 3], [0.5, 0.25, 0.25]]])
  with np.errstate(divide="ignore"):
    lp, lq = np.log(p), np.log(q)
  expected = [[0.5 * np.log(1.5) + 0.5 * np.log(0.75), np.log(2.0)]]
  np.testing.assert_allclose(kl_control.full_kl(f32(lp), f32(lq)), expected, rtol=1e-5)
  np.testing.assert_allclose(kl_control.full_kl(f32(lp), f32(lq), f32([[1, 0]])),
                             [[expected[0][0], 0.0]], rtol=1e-5)


def test_terminal_scores_last_valid_token():
  mask = f32([[1, 1, 0], [0, 0, 0], [1, 1, 1], [0, 1, 1]])
  out = kl_control.terminal_scores(f32([2.0, 3.0, 4.0, 5.0]), mask)
  np.testing.assert_allclose(out, [[0, 2, 0], [0, 0, 0], [0, 0, 4], [0, 0, 5]])


# ---------------------------------------------------------------- adaptive controller


def _trl(beta, kl, n, target=0.1, horizon=10000.0):
  """TRL AdaptiveKLController.update, written out: clip(kl/target - 1, -0.2, 0.2)."""
  err = min(max(kl / target - 1.0, -0.2), 0.2)
  return beta * (1.0 + err * n / horizon)


@pytest.mark.parametrize("kl,n", [(0.15, 64), (0.11, 64), (0.0, 256), (0.1, 8), (3.0, 1000)])
def test_adaptive_controller_matches_trl_formula(kl, n):
  ctl = kl_control.adaptive_kl_controller()
  s = jax.jit(ctl.update)(ctl.init(), kl, n)
  np.testing.assert_allclose(s.beta, _trl(0.2, kl, n), rtol=1e-6)


def test_adaptive_controller_hand_values_and_scan():
  ctl = kl_control.adaptive_kl_controller(0.2, 0.1, 10000)
  # kl 0.15: error 0.5 clipped to 0.2 -> beta = 0.2 (1 + 0.2 * 64 / 10000) = 0.200256.
  np.testing.assert_allclose(ctl.update(ctl.init(), 0.15, 64).beta, 0.200256, rtol=1e-6)
  # kl 0.09: error -0.1 -> 0.2 (1 - 0.1 * 100 / 10000) = 0.1998.
  np.testing.assert_allclose(ctl.update(ctl.init(), 0.09, 100).beta, 0.1998, rtol=1e-6)
  kls = f32([0.5, 0.05, 0.1, 0.12, 0.0])
  final, _ = jax.lax.scan(lambda s, k: (ctl.update(s, k, 5000), None), ctl.init(), kls)
  beta = 0.2
  for k in np.asarray(kls, np.float64):
    beta = _trl(beta, k, 5000)
  np.testing.assert_allclose(final.beta, beta, rtol=1e-5)
  fixed = kl_control.fixed_kl_controller(0.3)
  assert float(fixed.update(fixed.init(), 5.0, 64).beta) == pytest.approx(0.3)


# ---------------------------------------------------------------- degenerate and bad input


def test_degenerate_inputs_are_finite():
  ws = jnp.zeros((2, 0))
  idx = i32([[-1, -1], [-1, -1]])
  np.testing.assert_array_equal(spans.span_to_token_scores(ws, idx), np.zeros((2, 2)))
  mask0 = jnp.zeros((2, 3))
  ts = f32(np.full((2, 3), -np.inf))
  out = spans.token_to_word_scores(ts, i32(np.zeros((2, 3))), 2, mask0)
  np.testing.assert_array_equal(out, np.zeros((2, 2)))
  r = kl_control.kl_shaped_rewards(jnp.ones((2, 3)), f32(np.full((2, 3), np.nan)), 0.2, mask0)
  np.testing.assert_array_equal(r, np.zeros((2, 3)))
  assert float(kl_control.mean_sequence_kl(jnp.zeros((0, 3)))) == 0.0
  ctl = kl_control.adaptive_kl_controller()
  assert np.isfinite(ctl.update(ctl.init(), 1e30, 64).beta)


def test_bad_input_raises_naming_argument():
  ws, idx = jnp.zeros((2, 3)), i32(np.zeros((2, 4)))
  with pytest.raises(ValueError, match="word_index_of_token"):
    spans.span_to_token_scores(ws, idx.astype(jnp.float32))
  with pytest.raises(ValueError, match="word_index_of_token"):
    spans.span_to_token_scores(ws, i32(np.zeros((3, 4))))
  with pytest.raises(ValueError, match="mask"):
    spans.span_to_token_scores(ws, idx, jnp.ones((2, 5)))
  with pytest.raises(ValueError, match="num_words"):
    spans.token_to_word_scores(jnp.zeros((2, 4)), idx, 0)
  with pytest.raises(ValueError, match="bad"):
    spans.word_scores_from_spans(jnp.zeros((2, 3), bool), jnp.zeros((2, 4), bool))
  with pytest.raises(ValueError, match="checked"):
    spans.positional_critic(idx, idx, jnp.ones(5, bool), idx, 3)
  with pytest.raises(ValueError, match="targets"):
    spans.positional_critic(idx, idx[:, :3], jnp.ones(4, bool), idx, 3)
  with pytest.raises(ValueError, match="beta"):
    kl_control.kl_shaped_rewards(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.ones(2))
  with pytest.raises(ValueError, match="kl"):
    kl_control.kl_shaped_rewards(jnp.zeros((2, 3)), jnp.zeros((2, 4)), 0.1)
  with pytest.raises(ValueError, match="init_kl_coef"):
    kl_control.adaptive_kl_controller(init_kl_coef=-1.0)
  with pytest.raises(ValueError, match="horizon"):
    kl_control.adaptive_kl_controller(horizon=0.0)
  ctl = kl_control.adaptive_kl_controller()
  with pytest.raises(ValueError, match="current_kl"):
    ctl.update(ctl.init(), jnp.ones(3), 64)
  with pytest.raises(ValueError, match="ref_logp_all"):
    kl_control.full_kl(jnp.zeros((1, 2, 3)), jnp.zeros((1, 2, 4)))
  with pytest.raises(ValueError, match="mask"):
    kl_control.terminal_scores(jnp.zeros(2), jnp.ones((3, 4)))
