"""A contextual sequence bandit with a verifiable reward and an exact expected reward.

A context x in {0..C-1} is drawn uniformly; the response is L tokens from a vocabulary of V; each
context has a hidden target sequence. The reward is verifiable and binary by default:
  reward(x, y) = 1[ #{t : y_t = target[x, t]} >= threshold ]    ("threshold")
or the fraction of correct tokens ("fraction"). For a policy that is a product over positions,
pi(y | x) = prod_t pi_t(y_t | x) (the tabular softmax policy), the number of correct tokens is a
Poisson-binomial variable, so the expected reward is exact (a dynamic programme over positions).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from pgx_lab import validation

Array = jax.Array
REWARDS = ("threshold", "fraction")


class SequenceBandit(NamedTuple):
  """Static description of the task. Build it with `SequenceBandit.make`."""

  targets: Array          # [C, L] int32 target tokens
  vocab_size: int
  threshold: int
  reward_type: str

  @property
  def num_contexts(self) -> int:
    return self.targets.shape[0]

  @property
  def length(self) -> int:
    return self.targets.shape[1]

  @staticmethod
  def make(key: Array, num_contexts: int = 16, length: int = 4, vocab_size: int = 8,
           threshold: int = 2, reward_type: str = "threshold") -> "SequenceBandit":
    """Draws the hidden targets; raises ValueError on an invalid size or option."""
    for name, v in (("num_contexts", num_contexts), ("length", length),
                    ("vocab_size", vocab_size)):
      if not isinstance(v, int) or v < 1:
        raise ValueError(f"`{name}` must be a positive int, got {v!r}.")
    if not 1 <= threshold <= length:
      raise ValueError(f"`threshold` must be in [1, length={length}], got {threshold!r}.")
    validation.check_option("reward_type", reward_type, REWARDS)
    targets = jax.random.randint(key, (num_contexts, length), 0, vocab_size, jnp.int32)
    return SequenceBandit(targets, vocab_size, threshold, reward_type)

  def sample_contexts(self, key: Array, n: int) -> Array:
    """[n] contexts drawn uniformly."""
    return jax.random.randint(key, (n,), 0, self.num_contexts, jnp.int32)

  def reward(self, contexts: Array, responses: Array) -> Array:
    """Rewards [B] of responses [B, L] to contexts [B]."""
    validation.check_array("contexts", contexts, ndim=1, kind="int")
    validation.check_array("responses", responses, ndim=2, kind="int")
    validation.check_shape("responses", responses, (contexts.shape[0], self.length))
    correct = jnp.sum(responses == self.targets[contexts], axis=-1)
    if self.reward_type == "fraction":
      return correct.astype(jnp.float32) / self.length
    return (correct >= self.threshold).astype(jnp.float32)

  def expected_reward(self, target_probs: Array) -> Array:
    """Exact E[reward] per context from pi_t(target_t | x), target_probs [C, L] -> [C]."""
    validation.check_shape("target_probs", target_probs, self.targets.shape, against="targets")
    if self.reward_type == "fraction":
      return jnp.mean(target_probs, axis=-1)

    def add_position(dist, p):
      # dist[c, k] = P(k correct so far); one more Bernoulli(p) position.
      shifted = jnp.pad(dist, ((0, 0), (1, 0)))[:, :-1]
      return dist * (1.0 - p[:, None]) + shifted * p[:, None], None

    init = jnp.zeros((self.num_contexts, self.length + 1)).at[:, 0].set(1.0)
    dist, _ = jax.lax.scan(add_position, init, target_probs.T)
    return jnp.sum(dist[:, self.threshold:], axis=-1)
