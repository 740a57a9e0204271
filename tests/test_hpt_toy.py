"""The hpt paper module's toy: exact success against an independent log-prob path and against
sampling, the held-out split, the paper-epoch training set, and the SFT->GRPO two-stage schedule
against the single-method losses on the same batch."""

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax

from experiments.papers import _hpt_toy as toy
from pgx_lab.envs.token_tasks import vocab
from pgx_lab.models import sampling
from pgx_lab.models import transformer
from pgx_lab.rollout import sequences


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


_GRAD = jax.jit(jax.grad(toy.method_loss, has_aux=True))


@functools.lru_cache(maxsize=1)
def _batch(n=4, seed=5):
  """One batch of rollouts whose rewards are set so that two prompts are partly solved (GRPO has
  signal there) and two fail entirely (HPT's SFT side)."""
  params, prompts, demo = _setup(n=n, seed=seed)
  sample = jax.jit(sequences.sample_groups, static_argnums=(2, 3, 5))
  batch, extras = sample(jax.random.PRNGKey(seed + 2), params, toy.MODEL, toy.TASK, prompts,
                         toy.GROUP)
  solved = np.zeros((n, toy.GROUP), np.float32)
  solved[0, :3], solved[1, 1] = 1.0, 1.0
  batch = batch.replace(rewards=jnp.asarray(solved.reshape(-1)))
  return params, batch, extras["attention_mask"], prompts, demo


def _grads(method, step, split):
  """Flat gradient of `toy.method_loss` (one compiled function) on `_batch()`, and metrics."""
  g, m = _GRAD(*_batch(), jnp.int32(method), jnp.int32(step), jnp.int32(split))
  return jax.flatten_util.ravel_pytree(g)[0], m


def test_two_stage_is_exactly_sft_before_the_split_and_grpo_after_it():
  grpo, m_grpo = _grads(0, 7, 0)
  sft, m_sft = _grads(1, 7, 0)
  hpt, _ = _grads(2, 7, 0)
  split = toy.two_stage_split(4, 5)
  assert split == 10 and toy.two_stage_split(12, 25) == 150  # SFT_SHARE = 0.5: half the updates
  for t in (0, 9):
    g, m = _grads(3, t, split)
    np.testing.assert_array_equal(g, sft)
    assert float(m["sft_fraction"]) == 1.0
  for t in (10, 19):
    g, m = _grads(3, t, split)
    np.testing.assert_array_equal(g, grpo)
    assert float(m["sft_fraction"]) == 0.0
  # The three single-method gradients are distinct and non-zero, so the checks above can fail.
  for a, b in ((sft, grpo), (sft, hpt), (grpo, hpt)):
    assert float(jnp.linalg.norm(a - b)) > 1e-3 * float(jnp.linalg.norm(a) + jnp.linalg.norm(b))
  assert float(jnp.linalg.norm(grpo)) > 0 and float(m_sft["sft_fraction"]) == 1.0
  assert float(m_grpo["sft_fraction"]) == 0.0


def test_stage_reset_gives_a_fresh_optimizer_only_at_the_switch_of_the_two_stage_run():
  params = transformer.init_params(jax.random.PRNGKey(0), toy.MODEL)
  opt = optax.adam(1e-3)
  init = opt.init(params)
  g = jax.tree.map(jnp.ones_like, params)
  _, used = opt.update(g, init, params)                       # count 1, non-zero moments
  leaves = lambda s: jax.tree.leaves(s)
  for method, step in ((3, 10), (3, 9), (3, 11), (1, 10), (0, 10), (2, 10)):
    out = toy.stage_reset(used, init, method, step, 10)
    want = init if (method, step) == (3, 10) else used
    for x, y in zip(leaves(out), leaves(want)):
      np.testing.assert_array_equal(x, y)
