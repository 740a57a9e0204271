"""Group rollouts on token tasks: recomputed log-probs equal the sampler's, groups, masks and
rewards checked against an independent parse, and the batch feeds an estimator."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgx_lab.envs.token_tasks import make_task
from pgx_lab.envs.token_tasks import vocab
from pgx_lab.estimators import presets
from pgx_lab.models import transformer
from pgx_lab.rollout.sequences import response_logp
from pgx_lab.rollout.sequences import sample_groups

# Keywords with partial credit and no length guard: random responses earn varied rewards.
TASK = make_task("keywords", max_difficulty=3, reward_type="partial", max_extra_tokens=None)
N_NEW = 8
CONFIG = transformer.TransformerConfig(vocab_size=vocab.VOCAB_SIZE, max_len=TASK.prompt_len + N_NEW,
                                       d_model=32, num_layers=2, num_heads=2)
PARAMS = jax.jit(transformer.init_params, static_argnums=1)(jax.random.PRNGKey(0), CONFIG)
PROMPTS = TASK.sample_prompts(jax.random.PRNGKey(1), 6)
G = 4


@functools.partial(jax.jit, static_argnames=("group_size", "temperature", "top_k"))
def _rollout(key, params, prompts, group_size=G, temperature=1.0, top_k=None):
  return sample_groups(key, params, CONFIG, TASK, prompts, group_size, N_NEW,
                       temperature=temperature, top_k=top_k)


def _recompute(params, batch, extras):
  p = batch.tokens.shape[1] - batch.mask.shape[1]
  return response_logp(params, CONFIG, batch.tokens, p, extras["attention_mask"])


@pytest.mark.parametrize("temperature,top_k", [(1.0, None), (0.7, 5)])
def test_recomputed_logp_equals_old_logp(temperature, top_k):
  batch, extras = _rollout(jax.random.PRNGKey(2), PARAMS, PROMPTS, temperature=temperature,
                           top_k=top_k)
  logp, entropy = _recompute(PARAMS, batch, extras)
  assert logp.shape == batch.old_logp.shape == (6 * G, N_NEW)
  m = np.asarray(batch.mask) > 0
  np.testing.assert_allclose(np.asarray(logp)[m], np.asarray(batch.old_logp)[m], atol=2e-5)
  np.testing.assert_allclose(np.asarray(entropy)[m], np.asarray(extras["response_entropy"])[m],
                             atol=2e-5)
  # Independent check of the alignment: log-softmax of the full forward at the slot before each
  # response token.
  logits, _ = transformer.apply(PARAMS, CONFIG, batch.tokens, extras["attention_mask"])
  lsm = np.asarray(jax.nn.log_softmax(logits, axis=-1))
  p = PROMPTS.tokens.shape[1]
  toks = np.asarray(batch.tokens)
  for i in range(3):
    for t in range(N_NEW):
      assert abs(lsm[i, p + t - 1, toks[i, p + t]] - float(logp[i, t])) < 2e-5
  # At temperature 1 without filters the sampled distribution is the policy itself.
  if temperature == 1.0 and top_k is None:
    np.testing.assert_allclose(np.asarray(extras["sampling_logp"])[m],
                               np.asarray(batch.old_logp)[m], atol=2e-5)


def test_groups_masks_and_rewards_by_hand():
  batch, extras = _rollout(jax.random.PRNGKey(3), PARAMS, PROMPTS)
  p = PROMPTS.tokens.shape[1]
  toks, mask = np.asarray(batch.tokens), np.asarray(batch.mask)
  np.testing.assert_array_equal(batch.group_ids, np.repeat(np.arange(6), G))
  np.testing.assert_array_equal(toks[:, :p], np.repeat(np.asarray(PROMPTS.tokens), G, axis=0))
  rewards = np.asarray(batch.rewards)
  for i in range(6 * G):
    resp = toks[i, p:].tolist()
    end = resp.index(vocab.EOS) + 1 if vocab.EOS in resp else N_NEW
    np.testing.assert_array_equal(mask[i], [1.0] * end + [0.0] * (N_NEW - end))
    answer = set(resp[:end]) - {vocab.EOS}
    words = set(np.asarray(PROMPTS.target)[i // G, :int(PROMPTS.target_len[i // G])].tolist())
    assert rewards[i] == pytest.approx(len(words & answer) / len(words))
  assert len(set(rewards.tolist())) > 1   # the check above is not vacuous


def test_greedy_groups_are_identical_and_grad_flows():
  batch, extras = _rollout(jax.random.PRNGKey(4), PARAMS, PROMPTS, temperature=0.0)
  resp = np.asarray(extras["response"]).reshape(6, G, N_NEW)
  assert np.all(resp == resp[:, :1])
  # The batch feeds an estimator: GRPO loss and a finite, nonzero gradient.
  batch, extras = _rollout(jax.random.PRNGKey(5), PARAMS, PROMPTS)
  estimator = presets.grpo()

  def loss_fn(params):
    logp, entropy = _recompute(params, batch, extras)
    return estimator(logp, batch, entropy=entropy)[0]

  grads = jax.jit(jax.grad(loss_fn))(PARAMS)
  norm = np.sqrt(sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(grads)))
  assert np.isfinite(norm) and norm > 0


def test_bad_input_names_argument():
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match="group_size"):
    sample_groups(key, PARAMS, CONFIG, TASK, PROMPTS, 0, N_NEW)
  with pytest.raises(ValueError, match="eos_id"):
    sample_groups(key, PARAMS, CONFIG, TASK, PROMPTS, 2, N_NEW, eos_id=3)
  with pytest.raises(ValueError, match="max_new_tokens"):
    sample_groups(key, PARAMS, CONFIG, TASK, PROMPTS, 2, N_NEW + 1)
  with pytest.raises(ValueError, match="prompts"):
    sample_groups(key, PARAMS, CONFIG, TASK, PROMPTS.tokens, 2, N_NEW)
  tokens = jnp.zeros((2, 10), jnp.int32)
  for bad in (0, 10, 2.0):
    with pytest.raises(ValueError, match="prompt_len"):
      response_logp(PARAMS, CONFIG, tokens, bad)
  with pytest.raises(ValueError, match="batch_tokens"):
    response_logp(PARAMS, CONFIG, jnp.zeros((2, 10)), 3)
