"""DSP's hint rewards (pgx_lab/rewards/hints.py): hand-computed step and terminal rewards, a port of
the authors' string-level reward on random hints, ROUGE-1, degenerate rows, bad input; and the
frozen scorer of the DSP toy (experiments/papers/_dsp_toy.py)."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.papers import _dsp_toy as toy
from pgx_lab.rewards import hints

SEP, EOS = 1, 2
NEG = -0.2


def _step(tokens, mask, ref, ref_mask=None, **kw):
  tokens = jnp.asarray(tokens, jnp.int32)
  ref = jnp.asarray(ref, jnp.int32)
  ref_mask = jnp.ones(ref.shape) if ref_mask is None else jnp.asarray(ref_mask, jnp.float32)
  return np.asarray(hints.keyword_step_rewards(tokens, jnp.asarray(mask, jnp.float32), ref,
                                               ref_mask, SEP, **kw))


def test_step_rewards_by_hand():
  # "5 ; 7 ; 5 ; ; <eos>" against reference {5, 9}: hit, miss, repeat, empty, terminal step.
  r = _step([[5, SEP, 7, SEP, 5, SEP, SEP, EOS]], [[1] * 8], [[5, 9]])
  np.testing.assert_allclose(r, [[0, 1.0, 0, NEG, 0, NEG, NEG, 0]], atol=1e-7)
  r2 = _step([[5, SEP, 7, SEP, 5, SEP, SEP, EOS]], [[1] * 8], [[5, 9]], step_reward_coef=2.0,
             pos_coef=3.0, neg_coef=-0.5)
  np.testing.assert_allclose(r2, [[0, 6.0, 0, -1.0, 0, -1.0, -1.0, 0]], atol=1e-7)


def test_last_token_and_unclosed_keyword_get_no_step_reward():
  # A separator that is the last valid token (length limit) gets only the terminal reward.
  r = _step([[5, SEP, 9, SEP], [9, EOS, 0, 0]], [[1, 1, 1, 1], [1, 1, 0, 0]], [[9], [9]])
  np.testing.assert_allclose(r, [[0, NEG, 0, 0], [0, 0, 0, 0]], atol=1e-7)


def test_multi_token_keywords_are_contiguous_matches():
  # "5 6 ;" is a contiguous piece of the reference 4 5 6 7; "6 5 ;" is not; "5 6 ;" again
  # repeats; in the second row "6 ;" is a piece of the earlier keyword "5 6" (DSP's substring).
  r = _step([[5, 6, SEP, 6, 5, SEP, 5, 6, SEP, EOS], [5, 6, SEP, 6, SEP, EOS, 0, 0, 0, 0]],
            [[1] * 10, [1] * 6 + [0] * 4], [[4, 5, 6, 7], [5, 6, 0, 0]],
            [[1, 1, 1, 1], [1, 1, 0, 0]])
  np.testing.assert_allclose(r, [[0, 0, 1, 0, 0, NEG, 0, 0, NEG, 0],
                                 [0, 0, 1, 0, NEG, 0, 0, 0, 0, 0]], atol=1e-7)


def test_avoid_ids_padding_and_reference_mask():
  # 8 is in the reference but avoided; 9 sits in a masked reference slot; padding is ignored.
  r = _step([[5, SEP, 8, SEP, 9, SEP, EOS, 5, SEP]], [[1] * 7 + [0, 0]], [[5, 8, 9]],
            [[1, 1, 0]], avoid_ids=jnp.array([8, 11], jnp.int32))
  np.testing.assert_allclose(r, [[0, 1.0, 0, NEG, 0, NEG, 0, 0, 0]], atol=1e-7)


def _dsp_string_step_rewards(tokens, length, reference, ref_len):
  """A port of RewardSummarizationWithHint's step branch (hint_hit) on strings: one character
  per word token, ';' for the separator; returns {position: reward}."""
  char = lambda t: chr(ord("a") + int(t))
  ref = "".join(char(t) for t in reference[:ref_len])
  out = {}
  for pos in range(length - 1):            # the last step is `done`: terminal reward only
    if tokens[pos] != SEP:
      continue
    text = "".join(";" if t == SEP else char(t) for t in tokens[:pos + 1])
    gen_hints = text.split(";")[:-1]
    hint = gen_hints[-1].strip()
    history = ";".join(gen_hints[:-1]) if len(gen_hints) >= 2 else ""
    if hint == "" or hint in history:
      out[pos] = NEG
    else:
      out[pos] = 1.0 if hint in ref else NEG
  return out


def test_matches_a_port_of_the_authors_string_reward():
  rng = np.random.default_rng(0)
  b, t, r = 200, 9, 4
  tokens = rng.choice([SEP, SEP, 3, 4, 5, 6], size=(b, t))
  lengths = rng.integers(0, t + 1, size=b)
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)
  reference = rng.choice([3, 4, 5, 6, 7], size=(b, r))
  ref_len = rng.integers(0, r + 1, size=b)
  ref_mask = (np.arange(r)[None] < ref_len[:, None]).astype(np.float32)
  got = _step(tokens, mask, reference, ref_mask)
  want = np.zeros((b, t), np.float32)
  for i in range(b):
    for pos, v in _dsp_string_step_rewards(tokens[i], lengths[i], reference[i], ref_len[i]).items():
      want[i, pos] = v
  np.testing.assert_allclose(got, want, atol=1e-7)


def test_terminal_reward_by_hand_and_baseline_mode():
  mask = jnp.array([[1, 1, 0], [1, 1, 1], [0, 0, 0]], jnp.float32)
  score = jnp.array([0.5, 0.2, 0.9])
  r = hints.terminal_hint_reward(score, mask, coef=10.0)
  np.testing.assert_allclose(np.asarray(r), [[0, 5.0, 0], [0, 0, 2.0], [0, 0, 0]], atol=1e-6)
  base = jnp.array([0.3, 0.4, 0.0])
  rb = hints.terminal_hint_reward(score, mask, coef=2.0, baseline_score=base)
  # coef * 10 * (score - baseline): 2 * 10 * 0.2 = 4, 2 * 10 * (-0.2) = -4; empty row: nothing.
  np.testing.assert_allclose(np.asarray(rb), [[0, 4.0, 0], [0, 0, -4.0], [0, 0, 0]], atol=1e-5)


def test_hint_rewards_add_step_and_terminal_and_degenerate_rows_are_finite():
  tokens = jnp.array([[5, SEP, 7, SEP, EOS], [EOS, 0, 0, 0, 0], [0, 0, 0, 0, 0],
                      [SEP, SEP, SEP, SEP, SEP]], jnp.int32)
  mask = jnp.array([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]],
                   jnp.float32)
  ref = jnp.array([[5, 9]] * 4, jnp.int32)
  score = jnp.array([0.4, 0.1, 0.7, 0.0])
  r = np.asarray(hints.hint_rewards(tokens, mask, ref, jnp.ones((4, 2)), score, SEP, coef=10.0))
  np.testing.assert_allclose(r, [[0, 1.0, 0, NEG, 4.0],        # steps, then the terminal 10 * 0.4
                                 [1.0, 0, 0, 0, 0],            # single-token hint: EOS only
                                 [0, 0, 0, 0, 0],              # empty hint: nothing, finite
                                 [NEG, NEG, NEG, NEG, 0.0]], atol=1e-6)
  assert np.all(np.isfinite(r))


def _rouge1_counter(out, ref):
  co, cr = collections.Counter(out), collections.Counter(ref)
  overlap = sum(min(c, cr[w]) for w, c in co.items())
  return 0.0 if overlap == 0 else 2 * overlap / (len(out) + len(ref))


def test_rouge1_by_hand_and_against_counters():
  out = jnp.array([[3, 4, 4], [4, 4, 0], [3, 3, 3]], jnp.int32)
  om = jnp.array([[1, 1, 1], [1, 1, 0], [0, 0, 0]], jnp.float32)
  ref = jnp.array([[4, 5, 0], [4, 4, 5], [3, 0, 0]], jnp.int32)
  rm = jnp.array([[1, 1, 0], [1, 1, 1], [1, 0, 0]], jnp.float32)
  # overlap 1 of 3 + 2 tokens -> 0.4; overlap 2 of 2 + 3 -> 0.8; empty output -> 0.
  np.testing.assert_allclose(np.asarray(hints.rouge1_f1(out, om, ref, rm)), [0.4, 0.8, 0.0],
                             atol=1e-6)
  rng = np.random.default_rng(1)
  o, r = rng.integers(3, 7, (100, 5)), rng.integers(3, 7, (100, 4))
  ol, rl = rng.integers(0, 6, 100), rng.integers(0, 5, 100)
  got = hints.rouge1_f1(jnp.asarray(o), jnp.asarray(np.arange(5)[None] < ol[:, None]),
                        jnp.asarray(r), jnp.asarray(np.arange(4)[None] < rl[:, None]))
  want = [_rouge1_counter(list(o[i, :ol[i]]), list(r[i, :rl[i]])) for i in range(100)]
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)


def test_bad_input_names_the_argument():
  tok = jnp.zeros((2, 3), jnp.int32)
  m = jnp.ones((2, 3))
  ref, rm = jnp.zeros((2, 2), jnp.int32), jnp.ones((2, 2))
  with pytest.raises(ValueError, match="`tokens`"):
    hints.keyword_step_rewards(tok.astype(jnp.float32), m, ref, rm, SEP)
  with pytest.raises(ValueError, match="`mask`"):
    hints.keyword_step_rewards(tok, jnp.ones((2, 4)), ref, rm, SEP)
  with pytest.raises(ValueError, match="`reference`"):
    hints.keyword_step_rewards(tok, m, jnp.zeros((3, 2), jnp.int32), jnp.ones((3, 2)), SEP)
  with pytest.raises(ValueError, match="`sep_id`"):
    hints.keyword_step_rewards(tok, m, ref, rm, 1.0)
  with pytest.raises(ValueError, match="`neg_coef`"):
    hints.keyword_step_rewards(tok, m, ref, rm, SEP, neg_coef=float("nan"))
  with pytest.raises(ValueError, match="`score`"):
    hints.terminal_hint_reward(jnp.zeros(3), m)
  with pytest.raises(ValueError, match="`baseline_score`"):
    hints.terminal_hint_reward(jnp.zeros(2), m, baseline_score=jnp.zeros(3))
  with pytest.raises(ValueError, match="`output_mask`"):
    hints.rouge1_f1(tok, jnp.ones((2, 2)), ref, rm)


def test_toy_scorer_puts_hinted_words_first():
  docs = jnp.array([[9, 4, 10, 9, 10, 10, 5, 6]], jnp.int32)   # 10 x3, 9 x2, then 4, 5, 6
  ranked = np.asarray(toy.words_by_frequency(docs))[0]
  np.testing.assert_array_equal(ranked[:6], [10, 10, 10, 9, 9, 4])
  hint_toks, hint_mask = toy.pseudo_hints(docs)
  np.testing.assert_array_equal(np.asarray(hint_toks)[0], [10, SEP, 9, SEP, 4, SEP, EOS])
  # The hint "5 ; 5 ; 13 ;" -> summary 5, 13 (hallucinated), then the most frequent word 10.
  hint = jnp.array([[5, SEP, 5, SEP, 13, SEP, EOS]], jnp.int32)
  out, out_mask = toy.scorer_output(docs, hint, jnp.ones((1, 7)))
  np.testing.assert_array_equal(np.asarray(out)[0], [5, 13, 10])
  np.testing.assert_array_equal(np.asarray(out_mask)[0], [1, 1, 1])
  # With salient {4, 5, 12, 13}: the reference is {4, 5}; F1 = 2 * 1 / (3 + 2) = 0.4.
  salient = jnp.zeros(toy.NUM_WORDS, bool).at[jnp.array([1, 2, 9, 10])].set(True)
  np.testing.assert_allclose(np.asarray(toy.score(docs, salient, hint, jnp.ones((1, 7)))), [0.4])
  # Without a hint: 10, 9, 4 -> F1 0.4 as well; the best hint "4 ; 5 ;" -> 0.8.
  best = jnp.array([[4, SEP, 5, SEP, EOS]], jnp.int32)
  np.testing.assert_allclose(np.asarray(toy.score(docs, salient, best, jnp.ones((1, 5)))), [0.8])


def test_toy_oracle_hint_and_jitted_rewards():
  docs = jnp.array([[9, 4, 10, 9, 10, 10, 5, 6], [9, 4, 10, 9, 10, 10, 7, 6]], jnp.int32)
  salient = jnp.zeros(toy.NUM_WORDS, bool).at[jnp.array([1, 2, 9, 10])].set(True)
  hint, valid = toy.oracle_hints(docs, salient)
  np.testing.assert_array_equal(np.asarray(hint), [[4, SEP, 5, SEP, EOS, EOS, EOS],
                                                   [4, SEP, EOS, EOS, EOS, EOS, EOS]])
  np.testing.assert_array_equal(np.asarray(valid), [[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0]])
  f1 = toy.score(docs, salient, hint, valid)
  ref, ref_mask = toy.reference(docs, salient)
  fn = jax.jit(hints.hint_rewards, static_argnums=5)
  r = fn(hint, valid, ref, ref_mask, f1, SEP)
  # Two salient words: F1 0.8 -> 8, plus two hits; one salient word: F1 0.5 -> 5, plus one hit.
  np.testing.assert_allclose(np.asarray(r).sum(1), [10.0, 6.0], atol=1e-5)
  np.testing.assert_allclose(np.asarray(r), np.asarray(
      hints.hint_rewards(hint, valid, ref, ref_mask, f1, SEP)), atol=1e-6)
