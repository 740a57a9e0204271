"""The contextual sequence bandit and the tabular policy: exact expected reward, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgx_lab.envs.bandits import SequenceBandit
from pgx_lab.models.tabular import TabularSequencePolicy


@pytest.mark.parametrize("reward_type", ["threshold", "fraction"])
def test_expected_reward_matches_monte_carlo(reward_type):
  bandit = SequenceBandit.make(jax.random.PRNGKey(0), num_contexts=5, length=4, vocab_size=3,
                               threshold=2, reward_type=reward_type)
  policy = TabularSequencePolicy(5, 4, 3)
  params = policy.init(jax.random.PRNGKey(1), scale=1.0)
  exact = bandit.expected_reward(policy.target_probs(params, bandit.targets))
  n = 40_000
  contexts = jnp.repeat(jnp.arange(5, dtype=jnp.int32), n)
  responses = policy.sample(params, jax.random.PRNGKey(2), contexts)
  r = np.asarray(bandit.reward(contexts, responses)).reshape(5, n)
  # Rewards lie in [0, 1]: the standard error of a mean of n samples is at most 0.5 / sqrt(n).
  np.testing.assert_allclose(r.mean(1), np.asarray(exact), atol=5 * 0.5 / np.sqrt(n))


def test_threshold_reward_by_hand():
  bandit = SequenceBandit(jnp.array([[0, 1, 2]], jnp.int32), 3, 2, "threshold")
  responses = jnp.array([[0, 1, 0], [0, 0, 0], [0, 1, 2]], jnp.int32)
  r = bandit.reward(jnp.zeros(3, jnp.int32), responses)
  np.testing.assert_array_equal(np.asarray(r), [1.0, 0.0, 1.0])
  # P(>= 2 of 3 correct) with p = (0.5, 0.5, 0.5) is 0.5.
  np.testing.assert_allclose(bandit.expected_reward(jnp.full((1, 3), 0.5)), [0.5], atol=1e-6)


def test_logp_and_entropy_of_uniform_policy():
  policy = TabularSequencePolicy(2, 3, 4)
  params = policy.init(jax.random.PRNGKey(0))
  ctx = jnp.array([0, 1], jnp.int32)
  resp = policy.sample(params, jax.random.PRNGKey(1), ctx)
  np.testing.assert_allclose(policy.token_logp(params, ctx, resp), np.log(0.25), atol=1e-6)
  np.testing.assert_allclose(policy.token_entropy(params, ctx), np.log(4.0), atol=1e-6)


def test_bad_input_names_argument():
  with pytest.raises(ValueError, match="threshold"):
    SequenceBandit.make(jax.random.PRNGKey(0), length=3, threshold=4)
  with pytest.raises(ValueError, match="reward_type"):
    SequenceBandit.make(jax.random.PRNGKey(0), reward_type="dense")
  with pytest.raises(ValueError, match="num_contexts"):
    SequenceBandit.make(jax.random.PRNGKey(0), num_contexts=0)
  bandit = SequenceBandit.make(jax.random.PRNGKey(0), num_contexts=2, length=3)
  with pytest.raises(ValueError, match="responses"):
    bandit.reward(jnp.zeros(2, jnp.int32), jnp.zeros((2, 4), jnp.int32))
  with pytest.raises(ValueError, match="contexts"):
    bandit.reward(jnp.zeros(2), jnp.zeros((2, 3), jnp.int32))
