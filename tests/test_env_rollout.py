"""Env rollouts: equality with a Python loop, terminated vs truncated, masks, estimators end to end."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgx_lab.envs import api
from pgx_lab.envs.gymnax_adapter import GymnaxEnv
from pgx_lab.estimators import presets
from pgx_lab.models import mlp
from pgx_lab.rollout import model_policy_fn
from pgx_lab.rollout import model_value_fn
from pgx_lab.rollout import rollout

ENV = GymnaxEnv("CartPole-v1")
MODEL = mlp.CategoricalPolicy(2, hidden_sizes=(16,), value_head=True)
PARAMS = MODEL.init(jax.random.PRNGKey(0), jnp.zeros(4))
POLICY = model_policy_fn(MODEL)
VALUE = model_value_fn(MODEL)
LIMITED = ENV.default_params().replace(max_steps_in_episode=15)  # Some rows truncate.
B, T = 4, 24  # One shape for all tests, so that compilations are shared.


def push_right(params, key, obs):
  """Always action 1: the pole falls within a dozen steps."""
  del params, key, obs
  return jnp.int32(1), jnp.float32(0.0)


def balance(params, key, obs):
  """Push towards the side the pole leans to (with its angular velocity): keeps it up for >10 steps."""
  del params, key
  return (obs[2] + 0.5 * obs[3] > 0).astype(jnp.int32), jnp.float32(0.0)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def jit_rollout(key, b, t, auto_reset, policy, env_params):
  return rollout(key, ENV, env_params, policy, PARAMS, b, t, auto_reset=auto_reset,
                 value_fn=VALUE if policy is POLICY else None)


_STEP, _RESET, _POLICY, _VALUE = (jax.jit(f) for f in (ENV.step, ENV.reset, POLICY, VALUE))


def loop_rollout(key, env_params, b, t, auto_reset):
  """The documented key schedule, stepped in Python one env and one step at a time."""
  step, reset, policy, value = _STEP, _RESET, _POLICY, _VALUE
  k_reset, k_run = jax.random.split(key)
  reset_keys = jax.random.split(k_reset, b)
  row_keys = jnp.stack([jax.random.split(k, (b, 2)) for k in jax.random.split(k_run, t)], 1)
  rows = []
  for i in range(b):  # row i's keys: reset_keys[i], then row_keys[i, t] = (policy, env) at step t
    obs, state = reset(reset_keys[i], env_params)
    row = {n: [] for n in ("obs", "actions", "rewards", "logp", "terminated", "truncated", "mask",
                           "values")}
    ended = False
    for k_policy, k_env in row_keys[i]:
      action, logp = policy(PARAMS, k_policy, obs)
      row["obs"].append(obs)
      row["actions"].append(action)
      row["values"].append(value(PARAMS, obs))
      if ended:  # Episode mode after the end: padding at the frozen last obs.
        row["rewards"].append(0.0), row["logp"].append(0.0), row["mask"].append(0.0)
        row["terminated"].append(False), row["truncated"].append(False)
        continue
      k_step, k_next = jax.random.split(k_env) if auto_reset else (k_env, None)
      out = step(k_step, state, action, env_params)
      row["rewards"].append(out.reward), row["logp"].append(logp), row["mask"].append(1.0)
      row["terminated"].append(bool(out.terminated)), row["truncated"].append(bool(out.truncated))
      obs, state = out.obs, out.state
      if bool(out.terminated) or bool(out.truncated):
        if auto_reset:
          obs, state = reset(k_next, env_params)
        else:
          ended = True
    row["values"].append(value(PARAMS, obs))
    rows.append({k: np.asarray(v) for k, v in row.items()})
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


@pytest.mark.parametrize("auto_reset", [False, True])
def test_rollout_equals_python_loop(auto_reset):
  key = jax.random.PRNGKey(7)
  b, t = B, T
  traj = jit_rollout(key, b, t, auto_reset, POLICY, LIMITED)
  want = loop_rollout(key, LIMITED, b, t, auto_reset)
  m = want["mask"] > 0
  np.testing.assert_array_equal(traj.mask, want["mask"])
  np.testing.assert_array_equal(np.asarray(traj.actions)[m], want["actions"][m])
  for name in ("obs", "rewards", "logp", "values"):
    np.testing.assert_allclose(getattr(traj, name), want[name], rtol=1e-5, atol=1e-6,
                               err_msg=name)
  np.testing.assert_array_equal(traj.terminated, want["terminated"])
  np.testing.assert_array_equal(traj.truncated, want["truncated"])
  assert traj.truncated.any() and traj.terminated.any()  # Both endings occur in this sample.
  if auto_reset:
    assert m.all()
  else:
    assert not m.all()
    # One ending per finished row, on its last unmasked step.
    ends = np.asarray(traj.terminated | traj.truncated)
    last = m.sum(1) - 1
    for i in range(b):
      if not m[i].all():
        assert ends[i].sum() == 1 and ends[i, last[i]]


def test_vmap_over_keys_equals_separate_calls():
  keys = jax.random.split(jax.random.PRNGKey(3), 2)
  f = lambda k: rollout(k, ENV, LIMITED, POLICY, PARAMS, B, T, value_fn=VALUE)
  batched = jax.jit(jax.vmap(f))(keys)
  for i in range(2):
    single = jit_rollout(keys[i], B, T, False, POLICY, LIMITED)
    jax.tree.map(lambda a, s: np.testing.assert_allclose(a[i], s, rtol=1e-5, atol=1e-6),
                 batched, single)


def test_pole_falls_is_terminated():
  params = ENV.default_params()
  key = jax.random.PRNGKey(11)
  traj = jit_rollout(key, B, T, False, push_right, params)
  genv = ENV.gymnax_env
  for i, reset_key in enumerate(jax.random.split(jax.random.split(key)[0], B)):
    # Independent episode length from gymnax's own API: step until it reports termination.
    _, state = genv.reset(reset_key, params)
    length = 0
    while True:
      _, state, _, term, trunc, _ = genv.step(jax.random.PRNGKey(0), state, 1, params)
      length += 1
      if bool(term) or bool(trunc):
        break
    assert bool(term) and length < T
    np.testing.assert_array_equal(traj.mask[i], np.arange(T) < length)
    np.testing.assert_array_equal(traj.terminated[i], np.arange(T) == length - 1)
    assert not traj.truncated[i].any()
    np.testing.assert_allclose(traj.rewards[i].sum(), length)  # CartPole pays 1 per step taken.


def test_time_limit_is_truncated_under_vmap_over_env_params():
  base = ENV.default_params()
  limits = jnp.array([10, 6])
  params = jax.vmap(lambda n: base.replace(max_steps_in_episode=n))(limits)
  f = lambda p: rollout(jax.random.PRNGKey(5), ENV, p, balance, PARAMS, 4, 15)
  traj = jax.jit(jax.vmap(f))(params)
  assert not traj.terminated.any()  # The balancing policy keeps the pole up...
  for j, n in enumerate((10, 6)):  # ...and each task's time limit cuts its episodes.
    np.testing.assert_array_equal(traj.truncated[j], np.broadcast_to(np.arange(15) == n - 1, (4, 15)))
    np.testing.assert_array_equal(traj.mask[j], np.broadcast_to(np.arange(15) < n, (4, 15)))
  assert traj.values is None


def _logp_of(params, traj):
  dist, _ = MODEL.apply(params, traj.obs)
  return mlp.log_prob(dist, traj.actions)


@pytest.mark.parametrize("name", ["gpomdp", "ppo_gae"])
def test_estimators_take_the_trajectory(name):
  gamma = 0.99
  traj = jit_rollout(jax.random.PRNGKey(3), B, T, False, POLICY, LIMITED)
  batch = traj.to_sequence_batch(gamma)
  m = np.asarray(traj.mask)
  assert 0 < m.mean() < 1  # Some episodes ended inside the horizon.
  assert traj.terminated.any() and traj.truncated.any()
  est = presets.gpomdp(gamma) if name == "gpomdp" else presets.ppo(advantage="gae", whiten=False)

  @jax.jit
  def run(params, batch):
    logp = _logp_of(params, traj)
    loss_fn = lambda lp: est(lp, batch)[0]
    loss, g_logp = jax.value_and_grad(loss_fn)(logp)
    g_params = jax.grad(lambda p: loss_fn(_logp_of(p, traj)))(params)
    return loss, g_logp, g_params, logp

  loss, g_logp, g_params, logp = run(PARAMS, batch)
  # The recorded behaviour log-probs are those of the policy at the recorded obs and actions.
  np.testing.assert_allclose(np.asarray(logp)[m > 0], np.asarray(traj.logp)[m > 0], rtol=1e-5,
                             atol=1e-6)
  assert np.isfinite(loss)
  g_logp = np.asarray(g_logp)
  assert np.all(g_logp[m == 0] == 0.0)  # Padding carries no gradient...
  assert np.any(g_logp[m > 0] != 0.0)  # ...episode steps do.
  leaves = jax.tree.leaves(g_params)
  assert all(np.all(np.isfinite(x)) for x in leaves) and any(np.any(x != 0) for x in leaves)
  # Garbage in the padding changes nothing: rewards of padding steps, and values V_{t+1} after a
  # padding step t (the bootstrap of the last real step is V_{t+1} after a real step: untouched).
  noise = 100.0 * (1.0 - batch.mask)
  values = batch.values.at[:, 1:].add(noise)
  loss2, g2, _, _ = run(PARAMS, batch.replace(rewards=batch.rewards + noise, values=values))
  np.testing.assert_allclose(loss2, loss, rtol=1e-6)
  np.testing.assert_allclose(g2, g_logp, rtol=1e-6, atol=1e-9)


def test_auto_reset_stream():
  traj = jit_rollout(jax.random.PRNGKey(4), B, T, True, push_right, ENV.default_params())
  batch = traj.to_sequence_batch(0.9)
  assert np.all(np.asarray(traj.mask) == 1.0)
  term = np.asarray(traj.terminated)
  assert (term.sum(1) >= 2).all()  # Several falls per row: episodes restart.
  np.testing.assert_allclose(batch.discounts, np.where(term, 0.0, 0.9))
  obs = np.asarray(traj.obs)
  # After a fall the next obs is a fresh start: CartPole resets to U(-0.05, 0.05)^4.
  rows, cols = np.nonzero(term[:, :-1])
  assert np.all(np.abs(obs[rows, cols + 1]) <= 0.05)
  np.testing.assert_allclose(traj.rewards, 1.0)  # A reward on every step of the stream.


def test_gaussian_policy_on_pendulum():
  env = GymnaxEnv("Pendulum-v1")
  model = mlp.GaussianPolicy(1, hidden_sizes=(8,), value_head=True)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros(3))

  @jax.jit
  def run(key):
    traj = rollout(key, env, env.default_params(), model_policy_fn(model), params, 2, 6,
                   auto_reset=True, value_fn=model_value_fn(model))
    return traj, mlp.log_prob(model.apply(params, traj.obs)[0], traj.actions)

  traj, logp = run(jax.random.PRNGKey(1))
  assert traj.obs.shape == (2, 6, 3) and traj.actions.shape == (2, 6, 1)
  assert traj.values.shape == (2, 7) and traj.actions.dtype == jnp.float32
  np.testing.assert_allclose(logp, traj.logp, rtol=1e-5, atol=1e-5)


def test_bad_input_raises_value_error():
  p = ENV.default_params()
  k = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match="num_envs"):
    rollout(k, ENV, p, POLICY, PARAMS, 0, 5)
  with pytest.raises(ValueError, match="num_steps"):
    rollout(k, ENV, p, POLICY, PARAMS, 2, 2.5)
  with pytest.raises(ValueError, match="env"):
    rollout(k, ENV.gymnax_env, p, POLICY, PARAMS, 2, 5)
  with pytest.raises(ValueError, match="key"):
    rollout(jnp.zeros(3), ENV, p, POLICY, PARAMS, 2, 5)
  with pytest.raises(ValueError, match="auto_reset"):
    rollout(k, ENV, p, POLICY, PARAMS, 2, 5, auto_reset="yes")
  with pytest.raises(ValueError, match="policy_fn"):
    rollout(k, ENV, p, lambda *_: (jnp.float32(1.0), jnp.float32(0.0)), PARAMS, 2, 5)
  with pytest.raises(ValueError, match="policy_fn"):
    rollout(k, ENV, p, lambda *_: (jnp.zeros(2, jnp.int32), jnp.float32(0.0)), PARAMS, 2, 5)
  with pytest.raises(ValueError, match="policy_fn"):
    rollout(k, ENV, p, lambda *_: (jnp.int32(0), jnp.zeros(1)), PARAMS, 2, 5)
  with pytest.raises(ValueError, match="policy_fn"):
    rollout(k, ENV, p, lambda *_: jnp.int32(0), PARAMS, 2, 5)
  with pytest.raises(ValueError, match="value_fn"):
    rollout(k, ENV, p, POLICY, PARAMS, 2, 5, value_fn=lambda *_: jnp.zeros(1))
  no_head = mlp.CategoricalPolicy(2, hidden_sizes=(4,))
  with pytest.raises(ValueError, match="value head"):
    rollout(k, ENV, p, model_policy_fn(no_head), no_head.init(k, jnp.zeros(4)), 2, 5,
            value_fn=model_value_fn(no_head))
