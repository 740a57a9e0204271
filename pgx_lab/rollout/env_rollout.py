"""Environment rollouts: `num_envs` environments stepped `num_steps` times with `lax.scan`, vmapped.

    traj = rollout(key, env, env_params, policy_fn, policy_params, num_envs=64, num_steps=200)
    loss, metrics = presets.gpomdp(0.99)(logp, traj.to_sequence_batch(0.99))

Two modes:
  * episodes (`auto_reset=False`): every row is one episode from `reset`. When it ends (terminated
    or truncated) the row's obs and state are frozen and later steps are padding: mask 0,
    reward 0, logp 0, terminated and truncated False. A row still running at `num_steps` is cut by
    the horizon; `values[:, T]` bootstraps it.
  * continuing stream (`auto_reset=True`, PureJaxRL style, Lu et al. 2022): episodes restart in
    place (`api.auto_reset_step`), every step is data (mask 1), and `to_sequence_batch`'s
    discounts gamma * (1 - terminated) cut returns and GAE at terminal steps. Limitation: after a
    *truncated* step the next obs is the next episode's first obs, so `values[:, t + 1]` is not the
    truncated episode's bootstrap value and GAE runs on into the next episode there (the
    Trajectory has no field for V(final obs)). Time limits far longer than `num_steps` make this
    rare; use episode mode where truncation matters.

Layout and keys. The loop is a `lax.scan` over time of a step vmapped over rows (the layout of
gymnax's own loop), and its [T, B] outputs are transposed to the Trajectory's batch-major [B, T]
at the end (on CPU that transpose is ~15% of a CartPole random-action rollout; see
benchmarks/rollout.py). The key schedule is fixed, so a Python loop can reproduce it:
`k_reset, k_run = split(key)`; row b starts from `reset(split(k_reset, num_envs)[b])`;
`step_keys = split(k_run, num_steps)`; at step t, `keys = split(step_keys[t], (num_envs, 2))`
and row b calls `policy_fn(params, keys[b, 0], obs)` and `env.step(keys[b, 1], ...)` (or
`auto_reset_step(env, keys[b, 1], ...)`). Keys are derived inside the loop, step by step: on CPU,
key derivation is a large share of a CartPole step, and precomputing all [T, B] keys was slower.
"""

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from pgx_lab import types
from pgx_lab import validation
from pgx_lab.envs import api
from pgx_lab.envs import spaces
from pgx_lab.models import mlp

Array = jax.Array
PolicyFn = Callable[[Any, Array, Any], Any]
ValueFn = Callable[[Any, Any], Array]


def _check_static(env, num_envs, num_steps, policy_fn, value_fn, auto_reset) -> None:
  if not isinstance(env, api.Environment):
    raise ValueError(f"`env` must be a pgx_lab.envs.api.Environment, got {type(env).__name__}.")
  for name, n in (("num_envs", num_envs), ("num_steps", num_steps)):
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
      raise ValueError(f"`{name}` must be a positive Python int, got {n!r}.")
  if not callable(policy_fn):
    raise ValueError(f"`policy_fn` must be callable, got {type(policy_fn).__name__}.")
  if value_fn is not None and not callable(value_fn):
    raise ValueError(f"`value_fn` must be callable or None, got {type(value_fn).__name__}.")
  if not isinstance(auto_reset, bool):
    raise ValueError(f"`auto_reset` must be a bool, got {auto_reset!r}.")


def _check_key(key) -> None:
  if not hasattr(key, "dtype"):
    raise ValueError(f"`key` must be a PRNG key array, got {type(key).__name__}.")
  typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ()
  raw = key.dtype == jnp.uint32 and key.shape == (2,)
  if not (typed or raw):
    raise ValueError("`key` must be one PRNG key (jax.random.key() or PRNGKey()), got "
                     f"shape {tuple(key.shape)}, dtype {key.dtype}.")


def _check_policy_output(out, space: spaces.Space) -> None:
  """Trace-time check of `policy_fn`'s `(action, logp)` for one observation."""
  if not (isinstance(out, tuple) and len(out) == 2):
    raise ValueError("`policy_fn` must return a pair (action, logp).")
  action, logp = out
  kind = "int" if isinstance(space, spaces.Discrete) else "float"
  validation.check_array("policy_fn's action", action, kind=kind)
  validation.check_shape("policy_fn's action", action, space.shape, against="env.action_space")
  validation.check_array("policy_fn's logp", logp, ndim=0)


def _check_value(v) -> None:
  validation.check_array("value_fn's output", v, ndim=0)


def rollout(
    key: Array,
    env: api.Environment,
    env_params: Any,
    policy_fn: PolicyFn,
    policy_params: Any,
    num_envs: int,
    num_steps: int,
    *,
    auto_reset: bool = False,
    value_fn: Optional[ValueFn] = None,
) -> types.Trajectory:
  """Samples `num_envs` rollouts of `num_steps` steps; jittable (with the static arguments fixed).

  Args:
    key: one PRNG key; see the module docstring for how it is split (row b's randomness depends
      on `num_envs`, as in gymnax's loop).
    env: a pgx_lab `Environment` (static).
    env_params: the env's params pytree, shared by all rows (vmap `rollout` over it for a batch of
      tasks).
    policy_fn: `policy_fn(policy_params, key, obs) -> (action, logp)` for ONE observation (it is
      vmapped over rows): `action` of `env.action_space(env_params)`'s shape and dtype kind, `logp`
      a float scalar, its log-probability under the behaviour policy. `model_policy_fn` builds one
      from an `mlp` policy module.
    policy_params: the policy's params (a pytree); also passed to `value_fn`.
    num_envs: B, the number of rows (a positive Python int).
    num_steps: T, the number of steps per row (a positive Python int).
    auto_reset: False for one episode per row, True for a continuing stream (module docstring).
    value_fn: optional `value_fn(policy_params, obs) -> value` (float scalar) for one observation,
      e.g. a critic head; with a separate critic, pass `policy_params` as a (policy, critic) pair.

  Returns:
    `Trajectory` batch-major: obs [B, T, ...] (the obs each action was taken at), actions
    [B, T, ...], rewards [B, T] float32, logp [B, T], terminated / truncated [B, T] bool,
    mask [B, T] float32, values [B, T + 1] (V at each obs and V at the obs after the last step)
    or None without `value_fn`.

  Raises:
    ValueError: naming the argument, before compiling, for a wrong `env`, `num_envs`,
      `num_steps`, `key`, `policy_fn` output (action shape/dtype, logp shape) or `value_fn` output.
  """
  _check_static(env, num_envs, num_steps, policy_fn, value_fn, auto_reset)
  _check_key(key)
  space = env.action_space(env_params)

  def step_one(k_policy, k_env, obs, state, alive):
    """One step of one row: (next obs, next state, alive), (obs, action, reward, logp,
    terminated, truncated, mask, value)."""
    out = policy_fn(policy_params, k_policy, obs)
    _check_policy_output(out, space)
    action, logp = out
    value = None
    if value_fn is not None:
      value = value_fn(policy_params, obs)
      _check_value(value)
    if auto_reset:
      tr = api.auto_reset_step(env, k_env, state, action, env_params)
      rec = (obs, action, jnp.asarray(tr.reward, jnp.float32), logp, tr.terminated,
             tr.truncated, jnp.float32(1.0), value)
      return (tr.obs, tr.state, alive), rec
    tr = env.step(k_env, state, action, env_params)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(alive, n, o), new, old)
    zero = lambda x: jnp.where(alive, x, jnp.zeros_like(x))
    ended = jnp.logical_or(tr.terminated, tr.truncated)
    rec = (obs, action, zero(jnp.asarray(tr.reward, jnp.float32)), zero(logp),
           jnp.logical_and(alive, tr.terminated), jnp.logical_and(alive, tr.truncated),
           alive.astype(jnp.float32), value)
    return (keep(tr.obs, obs), keep(tr.state, state),
            jnp.logical_and(alive, jnp.logical_not(ended))), rec

  step_all = jax.vmap(step_one)

  def body(carry, step_key):
    obs, state, alive = carry
    keys = jax.random.split(step_key, (num_envs, 2))
    return step_all(keys[:, 0], keys[:, 1], obs, state, alive)

  k_reset, k_run = jax.random.split(key)
  obs0, state0 = jax.vmap(env.reset, (0, None))(jax.random.split(k_reset, num_envs), env_params)
  alive0 = jnp.ones((num_envs,), bool)
  (obs_last, _, _), rec = jax.lax.scan(body, (obs0, state0, alive0),
                                       jax.random.split(k_run, num_steps))
  # [T, B, ...] -> batch-major [B, T, ...].
  rec = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), rec)
  obs, actions, rewards, logp, terminated, truncated, mask, values = rec
  if value_fn is not None:
    last = jax.vmap(value_fn, (None, 0))(policy_params, obs_last)
    values = jnp.concatenate([values, last[:, None].astype(values.dtype)], axis=1)
  return types.Trajectory(obs=obs, actions=actions, rewards=rewards, logp=logp,
                          terminated=terminated, truncated=truncated, mask=mask, values=values)


def model_policy_fn(model) -> PolicyFn:
  """`policy_fn(params, key, obs) -> (action, logp)` sampling from an `mlp` policy module.

  Args:
    model: a flax module whose `apply(params, obs)` returns `(dist, value)` with `dist` an
      `mlp.Categorical` or `mlp.DiagGaussian` (`mlp.CategoricalPolicy`, `mlp.GaussianPolicy`).
  """

  def policy_fn(params, key, obs):
    dist, _ = model.apply(params, obs)
    action = mlp.sample(key, dist)
    return action, mlp.log_prob(dist, action)

  return policy_fn


def model_value_fn(model) -> ValueFn:
  """`value_fn(params, obs) -> value` reading the value head of an `mlp` policy module built with
  `value_head=True`."""

  def value_fn(params, obs):
    _, value = model.apply(params, obs)
    if value is None:
      raise ValueError("`model` has no value head: build it with value_head=True.")
    return value

  return value_fn
