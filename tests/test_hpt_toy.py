"""The hpt paper module's toy: exact success against an independent log-prob path and against
sampling, the held-out split, and the paper-epoch training set."""

import jax
import jax.numpy as jnp
import numpy as np

from experiments.papers import _hpt_toy as toy
from pgx_lab.envs.token_tasks import vocab
from pgx_lab.models import sampling
from pgx_lab.models import transformer


def _setup(n=6, seed=0):
  params = transformer.init_params(jax.random.PRNGKey(seed), toy.MODEL)
  prompts = toy.TASK.sample_prompts(jax.random.PRNGKey(seed + 1), n)
  return params, prompts, toy.TASK.demonstration(prompts)


def test_exact_success_at_t1_without_nucleus_is_the_demonstration_likelihood():
  params, prompts, demo = _setup()
  p = toy.exact_success(params, prompts, demo, 1.0, 1.0)
  logp, mask = toy.demo_logp(params, prompts, demo)  # sequences.response_logp: another path
  np.testing.assert_allclose(p, jnp.exp(jnp.sum(logp * mask, axis=1)), rtol=1e-4, atol=1e-9)


def test_exact_success_under_a_tiny_nucleus_is_greedy_decoding():
  # top_p -> 0 keeps only the most probable token: success is 1 iff greedy decoding writes the
  # demonstration, else 0.
  params, prompts, demo = _setup(n=16, seed=3)
  p = np.asarray(toy.exact_success(params, prompts, demo, 1.0, 1e-6))
  assert set(np.unique(np.round(p, 5))) <= {0.0, 1.0}
  mask = demo != vocab.PAD
  tokens = jnp.concatenate([prompts.tokens, demo], axis=1)
  attn = jnp.concatenate([prompts.mask.astype(jnp.int32), mask.astype(jnp.int32)], axis=1)
  logits, _ = transformer.apply(params, toy.MODEL, tokens, attn)
  greedy = jnp.argmax(logits[:, prompts.tokens.shape[1] - 1:-1], -1)
  want = np.asarray(jnp.all(jnp.where(mask, greedy == demo, True), axis=1), np.float64)
  np.testing.assert_allclose(p, want, atol=1e-5)


def test_nucleus_probabilities_match_sampling_frequencies():
  # One prompt position: the per-token factor of exact_success is the probability that
  # sampling.sample's distribution (sampling_logits) draws that token.
  logits = jax.random.normal(jax.random.PRNGKey(7), (5, 12)) * 2.0
  z = sampling.sampling_logits(logits, temperature=0.6, top_p=0.95)
  draws = jax.random.categorical(jax.random.PRNGKey(8), z[None], axis=-1, shape=(20_000, 5))
  freq = np.stack([np.bincount(np.asarray(draws[:, i]), minlength=12) / 20_000 for i in range(5)])
  probs = np.asarray(jax.nn.softmax(z, -1))
  se = np.sqrt(probs * (1 - probs) / 20_000) + 1e-4
  assert np.all(np.abs(freq - probs) < 5 * se)
  assert np.all(freq[probs == 0] == 0)


def test_held_out_split_is_a_fixed_fifth_and_disjoint_from_training():
  prompts = toy.TASK.sample_prompts(jax.random.PRNGKey(11), 4000)
  held = toy.held_out(prompts.tokens)
  np.testing.assert_array_equal(held, toy.held_out(prompts.tokens))
  distinct = {r.tobytes(): h for r, h in zip(np.asarray(prompts.tokens, np.int32), held)}
  frac = np.mean(list(distinct.values()))
  assert 0.12 < frac < 0.28, frac
  table, order = toy.paper_table(0, steps=8, eval_every=4, prompts=4, pool=400)
  assert not toy.held_out(table.tokens).any()
  assert order.shape == (2, 4, 4) and order.max() < toy.train_set_size(8, 4)


def test_train_set_size_keeps_the_papers_epochs():
  assert toy.train_set_size(300, 16) == 3450           # 300 * 16 * 46000 / 64000
  assert toy.train_set_size(500, 128) == 46_000
