"""gymnax environments behind pgx_lab's `Environment` API (terminated and truncated apart, no auto-reset).

    env = GymnaxEnv("CartPole-v1")
    params = env.default_params()
    obs, state = env.reset(key, params)
    out = env.step(key, state, action, params)     # Transition(obs, state, reward, terminated, ...)

gymnax 1.0.1's `Environment.step` (gymnax/environments/environment.py) calls
`step_env(key, state, action, params) -> (obs, state, reward, terminated, info)`, computes
`truncated = is_truncated(state, params)` (`state.time >= params.max_steps_in_episode`, the time
limit) and then auto-resets where either is true. This adapter calls `step_env` itself, so the
returned obs/state are those of the step taken (no reset; rollouts reset, see
`pgx_lab.envs.api.auto_reset_step`), and derives the time limit the same way.

Terminated and truncated are made exclusive: a step that reaches a terminal state on the time
limit's last step is `terminated` (the MDP ended: no bootstrap), not `truncated`; gymnax's `step`
reports both True there. So `truncated` always means "bootstrap from `out.obs`".

Spaces: gymnax `Discrete(n)` -> `spaces.Discrete(n)`, gymnax `Box(low, high, shape)` ->
`spaces.Box(low, high, shape)`. Environments with other spaces (dict observations) are refused at
construction. Params are gymnax's own `EnvParams` (a flax.struct dataclass, so a pytree); change a
field with `params.replace(max_steps_in_episode=10)`.
"""

from typing import Any, Tuple, Union

import gymnax
from gymnax.environments import environment as gymnax_environment
from gymnax.environments import spaces as gymnax_spaces
import jax
import jax.numpy as jnp

from pgx_lab.envs import api
from pgx_lab.envs import spaces

Array = jax.Array


def known_envs() -> Tuple[str, ...]:
  """The ids that `GymnaxEnv` accepts by name (gymnax's registry, runtime registrations included)."""
  return tuple(gymnax.registered_envs)


def convert_space(space: Any, what: str = "space") -> spaces.Space:
  """Maps a gymnax `Discrete` / `Box` space to `pgx_lab.envs.spaces`.

  Args:
    space: a gymnax space instance.
    what: what the space is (for the error message), e.g. "action_space".

  Raises:
    ValueError: for any other gymnax space (Dict, Tuple), naming `what`.
  """
  if isinstance(space, gymnax_spaces.Discrete):
    return spaces.Discrete(int(space.n), tuple(space.shape))
  if isinstance(space, gymnax_spaces.Box):
    return spaces.Box(space.low, space.high, tuple(space.shape))
  raise ValueError(f"`{what}` of type {type(space).__name__} is not supported by GymnaxEnv "
                   "(only gymnax Discrete and Box spaces map to pgx_lab.envs.spaces).")


class GymnaxEnv(api.Environment):
  """A gymnax 1.x environment as a pgx_lab `Environment`.

  Tested with CartPole-v1, Acrobot-v1, MountainCar-v0 (and Pendulum-v1's Box action space); any
  gymnax environment with Discrete/Box spaces and a `time` counter in its state should work.
  """

  def __init__(self, name_or_env: Union[str, gymnax_environment.Environment]):
    """Builds the adapter.

    Args:
      name_or_env: a gymnax id such as "CartPole-v1" (see `known_envs()`), or a gymnax
        `Environment` instance.

    Raises:
      ValueError: naming `name_or_env` if the id is unknown (the message lists the known ids) or
        the object is not a gymnax environment; naming the space if a space cannot be mapped.
    """
    if isinstance(name_or_env, str):
      if name_or_env not in known_envs():
        raise ValueError(f"unknown gymnax environment `name_or_env` {name_or_env!r}; known ids: "
                         f"{', '.join(known_envs())}.")
      env, _ = gymnax.make(name_or_env)
    elif isinstance(name_or_env, gymnax_environment.Environment):
      env = name_or_env
    else:
      raise ValueError("`name_or_env` must be a gymnax id (str) or a gymnax Environment, got "
                       f"{type(name_or_env).__name__}.")
    self._env = env
    params = env.default_params
    if not hasattr(params, "max_steps_in_episode"):
      raise ValueError(f"`name_or_env` {env.name!r}: its params have no `max_steps_in_episode`, "
                       "so the time limit cannot be derived.")
    # Fail here, not inside a jitted rollout, if a space has no pgx_lab counterpart.
    self.action_space(params)
    self.observation_space(params)

  @property
  def gymnax_env(self) -> gymnax_environment.Environment:
    """The wrapped gymnax environment."""
    return self._env

  @property
  def name(self) -> str:
    return self._env.name

  def default_params(self) -> Any:
    """gymnax's default `EnvParams` (a pytree; `max_steps_in_episode` is the time limit)."""
    return self._env.default_params

  def action_space(self, params: Any) -> spaces.Space:
    """The action space under `params` (gymnax's, mapped)."""
    return convert_space(self._env.action_space(params), "action_space")

  def observation_space(self, params: Any) -> spaces.Space:
    """The observation space under `params` (gymnax's, mapped)."""
    return convert_space(self._env.observation_space(params), "observation_space")

  def reset(self, key: Array, params: Any) -> Tuple[Array, Any]:
    """A new episode: gymnax's `reset_env`.

    Args:
      key: PRNG key.
      params: the env params (`default_params()` or a replaced copy).

    Returns:
      (obs, state): obs of shape `observation_space(params).shape`, gymnax's state (time 0).
    """
    return self._env.reset_env(key, params)

  def truncation(self, state: Any, params: Any) -> Array:
    """Whether `state` (after a step) is at the time limit: gymnax's `is_truncated` where it
    exists (gymnax >= 1.0.1), else `state.time >= params.max_steps_in_episode`."""
    if hasattr(self._env, "is_truncated"):
      return jnp.asarray(self._env.is_truncated(state, params), bool)
    return jnp.asarray(state.time) >= params.max_steps_in_episode

  def step(self, key: Array, state: Any, action: Array, params: Any) -> api.Transition:
    """One step without auto-reset.

    Args:
      key: PRNG key (used by stochastic dynamics, e.g. Acrobot's torque noise).
      state: gymnax state from `reset` or a previous `step`.
      action: an action of `action_space(params)`: an int scalar for Discrete, a float array of
        the Box's shape. Its shape and dtype are checked at trace time; outside jit its value is
        checked too (ValueError naming `action`).
      params: the env params.

    Returns:
      `Transition(obs, state, reward float32 [], terminated bool [], truncated bool [], info)`,
      with `terminated` the MDP's terminal condition and `truncated` the time limit reached by a
      step that did not terminate; `info` is gymnax's (e.g. "discount").
    """
    self.check_action(action, params)
    obs, next_state, reward, terminated, info = self._env.step_env(key, state, action, params)
    terminated = jnp.asarray(terminated, bool)
    truncated = jnp.logical_and(self.truncation(next_state, params), jnp.logical_not(terminated))
    return api.Transition(obs, next_state, jnp.asarray(reward, jnp.float32), terminated,
                          truncated, dict(info))
