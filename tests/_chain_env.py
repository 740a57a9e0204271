"""A tiny chain MDP for the data tests: states 0..n-1, start at 0, actions 0 = left, 1 = right.

Reaching state n - 1 gives reward 1 and terminates; otherwise the reward is 0 and the episode is
truncated after `time_limit` steps. Observations are one-hot float32 [n]. The expert (always
right) reaches the goal in exactly n - 1 steps.
"""

import flax.struct
import jax
import jax.numpy as jnp

from pgx_lab.envs import spaces
from pgx_lab.envs.api import Environment, Transition


@flax.struct.dataclass
class ChainParams:
  time_limit: int = flax.struct.field(pytree_node=False, default=8)


@flax.struct.dataclass
class ChainState:
  pos: jax.Array
  t: jax.Array


class Chain(Environment):
  """The chain of `n` states."""

  def __init__(self, n: int = 5):
    self.n = n

  def default_params(self):
    return ChainParams()

  def _obs(self, pos):
    return jax.nn.one_hot(pos, self.n, dtype=jnp.float32)

  def reset(self, key, params):
    del key
    state = ChainState(jnp.int32(0), jnp.int32(0))
    return self._obs(state.pos), state

  def step(self, key, state, action, params):
    del key
    pos = jnp.clip(state.pos + 2 * action - 1, 0, self.n - 1).astype(jnp.int32)
    t = state.t + 1
    terminated = pos == self.n - 1
    truncated = (t >= params.time_limit) & ~terminated
    return Transition(self._obs(pos), ChainState(pos, t), terminated.astype(jnp.float32),
                      terminated, truncated, {})

  def action_space(self, params):
    return spaces.Discrete(2)

  def observation_space(self, params):
    return spaces.Box(0.0, 1.0, (self.n,))


def expert(key, obs):
  """Always right."""
  del key, obs
  return jnp.int32(1)
