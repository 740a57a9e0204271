"""Sampling from the transformer LM: filters by hand, log-probs, frequencies, eos, padding, jit/vmap."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from pgx_lab.models import sampling
from pgx_lab.models import transformer as tf

CONFIG = tf.TransformerConfig(vocab_size=8, max_len=16, d_model=32, num_layers=1, num_heads=2)
top_k_filter = jax.jit(sampling.top_k_filter, static_argnums=1)
top_p_filter = jax.jit(sampling.top_p_filter)
STATIC = ("config", "max_new_tokens", "temperature", "top_k", "top_p", "eos_id", "use_cache")
sample = jax.jit(sampling.sample, static_argnames=STATIC)
token_logp_and_entropy = jax.jit(tf.token_logp_and_entropy, static_argnums=1)
apply = jax.jit(tf.apply, static_argnums=1)


@functools.lru_cache(maxsize=None)
def _noisy_params():
  params = tf.init_params(jax.random.PRNGKey(0), CONFIG)
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda x: x + 0.25 * rng.standard_normal(x.shape, np.float32), params)


def noisy_params(eos_bias=0.0):
  """Initial params plus N(0, 0.25^2) noise (logits far from uniform); `eos_bias` is added to the
  output bias of token 0, the eos of these tests."""
  params = dict(_noisy_params())
  params["head"] = {"kernel": params["head"]["kernel"],
                    "bias": params["head"]["bias"] + eos_bias * jax.nn.one_hot(0, CONFIG.vocab_size)}
  return params


N = 6  # new tokens in most tests: one shape, fewer compilations
PROMPT = jnp.array([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5], [0, 7, 6, 5, 4]], jnp.int32)
PROMPT_MASK = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 1]], jnp.int32)


def full_mask(prompt_mask, n):
  return jnp.concatenate([prompt_mask, jnp.ones((prompt_mask.shape[0], n), jnp.int32)], axis=1)


def test_top_k_by_hand_and_exactly_k():
  logits = jnp.array([[1.0, 3.0, 2.0, 3.0, 0.0]])
  kept = np.isfinite(np.asarray(top_k_filter(logits, 2)))
  np.testing.assert_array_equal(kept, [[False, True, False, True, False]])
  # Ties at the threshold: exactly k survive, the lower index first.
  kept = np.isfinite(np.asarray(top_k_filter(logits, 1)))
  np.testing.assert_array_equal(kept, [[False, True, False, False, False]])
  np.testing.assert_array_equal(np.asarray(top_k_filter(logits, 3))[0, [1, 2, 3]],
                                [3.0, 2.0, 3.0])
  rand = jax.random.normal(jax.random.PRNGKey(0), (50, 9)).round(1)  # rounding makes ties
  for k in (1, 4, 9):
    out = np.asarray(top_k_filter(rand, k))
    assert np.all(np.isfinite(out).sum(-1) == k)
    # every dropped logit is <= every kept one
    assert np.all(np.where(np.isfinite(out), rand, np.inf).min(-1) >=
                  np.where(np.isfinite(out), -np.inf, rand).max(-1))


def test_top_p_by_hand():
  probs = np.array([0.15, 0.5, 0.05, 0.3])  # shuffled so the scatter back is exercised
  logits = jnp.log(jnp.asarray(probs, jnp.float32))[None]
  for p, want in [(0.3, [1]), (0.5, [1]), (0.6, [1, 3]), (0.79, [1, 3]), (0.81, [0, 1, 3]),
                  (0.96, [0, 1, 2, 3]), (1.0, [0, 1, 2, 3])]:
    kept = np.flatnonzero(np.isfinite(np.asarray(top_p_filter(logits, p))[0]))
    np.testing.assert_array_equal(kept, want, err_msg=f"p={p}")
  # -inf logits (after top-k) are never revived.
  kept = np.isfinite(np.asarray(top_p_filter(logits.at[0, 1].set(-jnp.inf), 1.0)))
  np.testing.assert_array_equal(kept, [[True, False, True, True]])


def test_top_p_keeps_the_smallest_sufficient_set():
  logits = jax.random.normal(jax.random.PRNGKey(1), (200, 10)) * 2
  probs = np.asarray(jax.nn.softmax(logits, -1), np.float64)
  for p in (0.2, 0.5, 0.9):
    kept = np.isfinite(np.asarray(top_p_filter(logits, p)))
    mass = (probs * kept).sum(-1)
    smallest_kept = np.where(kept, probs, np.inf).min(-1)
    largest_dropped = np.where(kept, -np.inf, probs).max(-1)
    assert np.all(mass >= p - 1e-6)  # enough mass
    assert np.all(mass - smallest_kept < p + 1e-6)  # dropping any kept token falls below p
    assert np.all(smallest_kept >= largest_dropped)  # the most probable tokens are the ones kept


def test_shapes_eos_masking_and_cached_equals_uncached():
  params = noisy_params(eos_bias=1.0)
  prompt, prompt_mask = jnp.tile(PROMPT, (4, 1)), jnp.tile(PROMPT_MASK, (4, 1))
  outs = [sample(params, CONFIG, jax.random.PRNGKey(3), prompt, prompt_mask, N, eos_id=0,
                 use_cache=c) for c in (True, False)]
  o = outs[0]
  assert o.tokens.shape == (12, 5 + N) and o.tokens.dtype == jnp.int32
  for x in (o.response, o.response_logp, o.response_mask, o.response_entropy, o.sampling_logp,
            o.response_values):
    assert x.shape == (12, N)
  np.testing.assert_array_equal(o.tokens[:, :5], prompt)
  np.testing.assert_array_equal(o.tokens[:, 5:], o.response)
  np.testing.assert_array_equal(outs[0].response, outs[1].response)
  for field in ("response_logp", "response_entropy", "sampling_logp", "response_values"):
    np.testing.assert_allclose(getattr(outs[0], field), getattr(outs[1], field), atol=1e-4)
  # eos: the mask is 1 up to and including the first eos, the response is eos after it.
  response, mask = np.asarray(o.response), np.asarray(o.response_mask)
  has_eos = (response == 0).any(-1)
  assert 0 < has_eos.sum() < len(response), "the test needs rows with and without eos"
  assert (response[:, 0] != 0).any(), "the test needs an eos after the first token"
  for row, m in zip(response, mask):
    first = np.flatnonzero(row == 0)
    end = first[0] + 1 if first.size else N
    np.testing.assert_array_equal(m, np.arange(N) < end)
    np.testing.assert_array_equal(row[end:], 0)
  # Recomputing with the response mask as attention mask (masked keys after eos) gives the same
  # log-probs on the response tokens.
  mask_full = jnp.concatenate([prompt_mask, o.response_mask.astype(jnp.int32)], axis=1)
  logp, _ = token_logp_and_entropy(params, CONFIG, o.tokens, mask_full)
  np.testing.assert_allclose(np.where(mask > 0, o.response_logp, 0),
                             np.where(mask > 0, logp[:, 4:], 0), atol=1e-4)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, None, None), (0.7, 3, 0.8)])
def test_logps_equal_recomputation_on_the_full_sequence(temperature, top_k, top_p):
  params = noisy_params()
  o = sample(params, CONFIG, jax.random.PRNGKey(4), PROMPT, PROMPT_MASK, N,
             temperature=temperature, top_k=top_k, top_p=top_p)
  mask = full_mask(PROMPT_MASK, N)
  logp, entropy = token_logp_and_entropy(params, CONFIG, o.tokens, mask)
  np.testing.assert_allclose(o.response_logp, logp[:, 4:], atol=1e-4)
  np.testing.assert_allclose(o.response_entropy, entropy[:, 4:], atol=1e-4)
  logits, values = apply(params, CONFIG, o.tokens, mask)
  np.testing.assert_allclose(o.response_values, values[:, 4:-1], atol=1e-4)
  z = sampling.sampling_logits(logits[:, 4:-1], temperature=temperature, top_k=top_k, top_p=top_p)
  q = jnp.take_along_axis(jax.nn.log_softmax(z, -1), o.response[..., None], -1)[..., 0]
  np.testing.assert_allclose(o.sampling_logp, q, atol=1e-4)
  assert np.all(np.isfinite(o.sampling_logp))
  if top_k is not None:  # the filtered distribution is not the model's: the two log-probs differ
    assert np.abs(np.asarray(o.sampling_logp) - np.asarray(o.response_logp)).max() > 1e-2


def test_greedy_is_argmax_and_the_low_temperature_limit():
  params = noisy_params()
  greedy = sample(params, CONFIG, jax.random.PRNGKey(5), PROMPT, PROMPT_MASK, N, temperature=0.0)
  logits, _ = apply(params, CONFIG, greedy.tokens, full_mask(PROMPT_MASK, N))
  np.testing.assert_array_equal(greedy.response, jnp.argmax(logits[:, 4:-1], -1))
  np.testing.assert_array_equal(greedy.sampling_logp, 0.0)
  top2 = np.sort(np.asarray(logits[:, 4:-1]), -1)[..., -2:]
  gap = (top2[..., 1] - top2[..., 0]).min()
  temperature = float(gap) / 30.0  # P(not the argmax) <= (V - 1) e^{-30} per step
  cold = sample(params, CONFIG, jax.random.PRNGKey(6), PROMPT, PROMPT_MASK, N,
                temperature=temperature)
  np.testing.assert_array_equal(cold.response, greedy.response)


def test_one_step_frequencies_match_the_sampling_distribution():
  """Pearson's chi-square goodness of fit over the kept categories, one step, m draws.

  The output head is set to a zero kernel and a bias b, so the next-token logits are exactly b
  whatever the prompt, and the target softmax(top_k(b / temperature)) is known in closed form.
  With a correct sampler the statistic is approximately chi2(kept - 1) (all expected counts are
  >= 5); the threshold is its 1 - 1e-6 quantile, so a correct sampler fails with probability
  ~1e-6 (and the key is fixed, so the test is deterministic). The dropped categories must never
  be drawn.
  """
  probs = np.array([0.05, 0.25, 0.1, 0.02, 0.2, 0.15, 0.08, 0.15])
  temperature, top_k, m = 0.6, 6, 20_000
  params = dict(noisy_params())
  params["head"] = {"kernel": jnp.zeros_like(params["head"]["kernel"]),
                    "bias": jnp.log(jnp.asarray(probs, jnp.float32))}
  prompt = jnp.tile(jnp.array([[2, 5, 3]], jnp.int32), (m, 1))
  o = sample(params, CONFIG, jax.random.PRNGKey(7), prompt, jnp.ones_like(prompt), 1,
             temperature=temperature, top_k=top_k)
  target = probs ** (1 / temperature)
  target[np.argsort(probs)[:-top_k]] = 0.0  # the two least probable: 0.02 and 0.05
  target /= target.sum()
  counts = np.bincount(np.asarray(o.response[:, 0]), minlength=CONFIG.vocab_size)
  np.testing.assert_array_equal(counts[[0, 3]], 0)
  kept = target > 0
  expected = m * target[kept]
  assert expected.min() >= 5
  chi2 = ((counts[kept] - expected) ** 2 / expected).sum()
  assert chi2 < stats.chi2.ppf(1 - 1e-6, df=kept.sum() - 1), (counts, expected)


def test_left_padding_gives_the_unpadded_response():
  params = noisy_params()
  prompts = [np.array([3, 4, 5]), np.array([1, 2, 3, 4, 5]), np.array([7, 6, 5, 4])]
  padded = sample(params, CONFIG, jax.random.PRNGKey(9), PROMPT, PROMPT_MASK, N)
  for i, real in enumerate(prompts):
    np.testing.assert_array_equal(np.asarray(PROMPT[i])[-len(real):], real)
    seq = jnp.asarray(np.concatenate([real, np.asarray(padded.response[i])]))[None]
    logp, _ = token_logp_and_entropy(params, CONFIG, seq, jnp.ones_like(seq))
    np.testing.assert_allclose(padded.response_logp[i], logp[0, len(real) - 1:], atol=1e-4)
  # More padding (with other pad ids), same key and batch size: the same draws.
  more = jnp.concatenate([jnp.full((3, 2), 6, jnp.int32), PROMPT], axis=1)
  more_mask = jnp.concatenate([jnp.zeros((3, 2), jnp.int32), PROMPT_MASK], axis=1)
  repadded = sample(params, CONFIG, jax.random.PRNGKey(9), more, more_mask, N)
  np.testing.assert_array_equal(repadded.response, padded.response)
  np.testing.assert_allclose(repadded.response_logp, padded.response_logp, atol=1e-5)


def test_vmap_over_keys_equals_separate_calls():
  params = noisy_params()
  keys = jax.random.split(jax.random.PRNGKey(11), 3)
  kw = dict(temperature=0.7, top_k=3, top_p=0.8)
  f = lambda k: sampling.sample(params, CONFIG, k, PROMPT, PROMPT_MASK, N, **kw)
  batched = jax.jit(jax.vmap(f))(keys)
  assert batched.response.shape == (3, 3, N)
  for i, k in enumerate(keys):
    one = sample(params, CONFIG, k, PROMPT, PROMPT_MASK, N, **kw)
    np.testing.assert_array_equal(batched.response[i], one.response)
    np.testing.assert_allclose(batched.response_logp[i], one.response_logp, atol=1e-5)


def test_bad_input_names_argument():
  params = noisy_params()
  call = functools.partial(sampling.sample, params, CONFIG, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="prompt"):
    call(PROMPT.at[0, 3].set(CONFIG.vocab_size), PROMPT_MASK, 3)
  with pytest.raises(ValueError, match="prompt"):
    call(PROMPT.astype(jnp.float32), PROMPT_MASK, 3)
  with pytest.raises(ValueError, match="prompt"):
    call(jnp.ones((1, CONFIG.max_len + 1), jnp.int32), jnp.ones((1, CONFIG.max_len + 1)), 1)
  with pytest.raises(ValueError, match="max_new_tokens"):
    call(PROMPT, PROMPT_MASK, CONFIG.max_len - 4)
  with pytest.raises(ValueError, match="max_new_tokens"):
    call(PROMPT, PROMPT_MASK, 0)
  with pytest.raises(ValueError, match="prompt_mask"):
    call(PROMPT, PROMPT_MASK[:, :4], 3)
  with pytest.raises(ValueError, match="prompt_mask"):
    call(PROMPT, PROMPT_MASK[:, ::-1], 3)  # right padding
  with pytest.raises(ValueError, match="top_k"):
    call(PROMPT, PROMPT_MASK, 3, top_k=0)
  with pytest.raises(ValueError, match="top_p"):
    call(PROMPT, PROMPT_MASK, 3, top_p=1.5)
  with pytest.raises(ValueError, match="temperature"):
    call(PROMPT, PROMPT_MASK, 3, temperature=-1.0)
  with pytest.raises(ValueError, match="eos_id"):
    call(PROMPT, PROMPT_MASK, 3, eos_id=CONFIG.vocab_size)
