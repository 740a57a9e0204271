"""The functional environment API: pure `reset` and `step`, jittable and vmappable.

    obs, state = env.reset(key, params)
    out = env.step(key, state, action, params)     # a `Transition`
    out.obs, out.state, out.reward, out.terminated, out.truncated, out.info

`terminated` (the MDP reached a terminal state: no bootstrap) and `truncated` (a time limit cut the
episode: bootstrap from `out.obs`) are kept apart. `step` does not reset by itself; rollouts call
`reset` where an episode ended (see `auto_reset_step`). Environment params are a pytree (a
`flax.struct.dataclass`), so a vmap over params gives a batch of different tasks.
"""

import abc
from typing import Any, Dict, NamedTuple, Tuple

import jax
import jax.numpy as jnp

from pgx_lab.envs import spaces

Array = jax.Array


class Transition(NamedTuple):
  """What `step` returns (the six values of gymnax 1.x, named)."""

  obs: Any
  state: Any
  reward: Array
  terminated: Array
  truncated: Array
  info: Dict[str, Array]


class Environment(abc.ABC):
  """Base class: subclasses implement `default_params`, `reset`, `step` and the two spaces."""

  @property
  def name(self) -> str:
    return type(self).__name__

  @abc.abstractmethod
  def default_params(self) -> Any:
    """The environment's parameters (a pytree)."""

  @abc.abstractmethod
  def reset(self, key: Array, params: Any) -> Tuple[Any, Any]:
    """Returns (obs, state) of a new episode."""

  @abc.abstractmethod
  def step(self, key: Array, state: Any, action: Array, params: Any) -> Transition:
    """One transition from `state` under `action`."""

  @abc.abstractmethod
  def action_space(self, params: Any) -> spaces.Space:
    """The space of valid actions."""

  @abc.abstractmethod
  def observation_space(self, params: Any) -> spaces.Space:
    """The space of observations."""

  def check_action(self, action: Any, params: Any) -> None:
    """Raises ValueError naming `action` if it has the wrong shape or dtype, or (when concrete,
    i.e. outside jit) a value outside the action space."""
    spaces.check_in_space("action", action, self.action_space(params))


def auto_reset_step(env: Environment, key: Array, state: Any, action: Array,
                    params: Any) -> Transition:
  """`env.step`, then a reset where the episode ended: the returned obs/state start the next
  episode, while reward, terminated, truncated and `info["final_obs"]` describe the step taken."""
  k_step, k_reset = jax.random.split(key)
  out = env.step(k_step, state, action, params)
  obs0, state0 = env.reset(k_reset, params)
  done = jnp.logical_or(out.terminated, out.truncated)
  pick = lambda a, b: jax.tree.map(lambda x, y: jnp.where(done, x, y), a, b)
  info = dict(out.info)
  info["final_obs"] = out.obs
  return Transition(pick(obs0, out.obs), pick(state0, out.state), out.reward, out.terminated,
                    out.truncated, info)

