"""GymnaxEnv: agreement with gymnax's own auto-resetting `step`, spaces, time limits, bad input."""

import gymnax
from gymnax.environments import spaces as gymnax_spaces
from gymnax.environments.classic_control import cartpole
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgx_lab.envs import api
from pgx_lab.envs import spaces
from pgx_lab.envs.gymnax_adapter import GymnaxEnv
from pgx_lab.envs.gymnax_adapter import convert_space

LIMIT = 15  # A short time limit, so that truncations happen within the test's steps.
STEPS = 90
BIAS = 0.6  # Probability of the last action (CartPole: push right), so that poles also fall.


def _compare_with_gymnax(name):
  """Steps the adapter with biased random actions (resetting by hand) and, from the same state, gymnax's
  own `step`; returns per-step arrays of both, plus the steps since reset counted here."""
  env = GymnaxEnv(name)
  genv, gparams = gymnax.make(name)
  params = env.default_params().replace(max_steps_in_episode=LIMIT)
  gparams = gparams.replace(max_steps_in_episode=LIMIT)
  space = env.action_space(params)

  def body(carry, key):
    state, since_reset = carry
    k_act, k_step, k_reset = jax.random.split(key, 3)
    k_act, k_bias = jax.random.split(k_act)
    action = jnp.where(jax.random.bernoulli(k_bias, BIAS), space.n - 1, space.sample(k_act))
    # gymnax's step uses the first half of its key for step_env: hand the adapter the same one.
    out = env.step(jax.random.split(k_step)[0], state, action, params)
    g_obs, _, g_rew, g_term, g_trunc, g_info = genv.step(k_step, state, action, gparams)
    done = out.terminated | out.truncated
    obs0, state0 = env.reset(k_reset, params)
    nxt = jax.tree.map(lambda a, b: jnp.where(done, a, b), state0, out.state)
    rec = dict(obs=out.obs, rew=out.reward, term=out.terminated, trunc=out.truncated,
               g_final=g_info["final_observation"], g_rew=g_rew, g_term=g_term, g_trunc=g_trunc,
               g_obs=g_obs, since=since_reset + 1)
    return (nxt, jnp.where(done, 0, since_reset + 1)), rec

  _, state = env.reset(jax.random.PRNGKey(0), params)
  keys = jax.random.split(jax.random.PRNGKey(1), STEPS)
  _, rec = jax.jit(lambda s, k: jax.lax.scan(body, (s, 0), k))(state, keys)
  return jax.tree.map(np.asarray, rec)


@pytest.mark.parametrize("name", ["CartPole-v1", "Acrobot-v1", "MountainCar-v0"])
def test_step_agrees_with_gymnax_step(name):
  r = _compare_with_gymnax(name)
  # The adapter's obs is the obs of the step taken: gymnax's pre-reset "final_observation".
  np.testing.assert_allclose(r["obs"], r["g_final"], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(r["rew"], r["g_rew"], rtol=1e-6)
  np.testing.assert_array_equal(r["term"], r["g_term"])
  # Exclusive flags: truncated is gymnax's truncated on steps that did not terminate.
  np.testing.assert_array_equal(r["trunc"], r["g_trunc"] & ~r["g_term"])
  # Independently: truncated exactly when LIMIT steps have passed since the reset.
  np.testing.assert_array_equal(r["trunc"], (r["since"] == LIMIT) & ~r["term"])
  assert r["trunc"].sum() >= 2  # The time limit was exercised.
  # Without an episode end, gymnax does not reset, so its obs is ours.
  live = ~(r["term"] | r["trunc"])
  np.testing.assert_allclose(r["obs"][live], r["g_obs"][live], rtol=1e-6, atol=1e-6)
  if name == "CartPole-v1":
    assert r["term"].sum() >= 1  # Pushed mostly right, the pole falls in some episodes.


def test_terminal_on_last_step_is_terminated_not_truncated():
  env = GymnaxEnv("CartPole-v1")
  params = env.default_params().replace(max_steps_in_episode=5)
  # Pole already past the 12-degree threshold, one step before the time limit.
  state = cartpole.EnvState(x=jnp.float32(0.0), x_dot=jnp.float32(0.0), theta=jnp.float32(0.5),
                            theta_dot=jnp.float32(1.0), time=4)
  out = env.step(jax.random.PRNGKey(0), state, jnp.int32(1), params)
  assert bool(out.terminated) and not bool(out.truncated)
  _, _, _, g_term, g_trunc, _ = env.gymnax_env.step(jax.random.PRNGKey(0), state, 1, params)
  assert bool(g_term) and bool(g_trunc)  # gymnax reports both; the adapter keeps them apart.


def test_no_auto_reset_and_stepping_past_the_end():
  env = GymnaxEnv("CartPole-v1")
  params = env.default_params()
  obs, state = env.reset(jax.random.PRNGKey(0), params)
  step = jax.jit(env.step)
  for _ in range(40):  # Always pushing right: the pole falls within ~10 steps.
    out = step(jax.random.PRNGKey(0), state, jnp.int32(1), params)
    if bool(out.terminated):
      break
    state = out.state
  assert bool(out.terminated)
  # The returned obs is the terminal one (|theta| beyond the threshold), not a reset obs.
  assert abs(float(out.obs[2])) > params.theta_threshold_radians
  np.testing.assert_allclose(out.obs, jnp.stack([out.state.x, out.state.x_dot, out.state.theta,
                                                 out.state.theta_dot]))


def test_vmap_and_jit_match_single_steps():
  env = GymnaxEnv("Acrobot-v1")
  params = env.default_params()
  keys = jax.random.split(jax.random.PRNGKey(3), 4)
  obs, states = jax.vmap(env.reset, (0, None))(keys, params)
  actions = jnp.array([0, 1, 2, 1], jnp.int32)
  batched = jax.jit(jax.vmap(env.step, (0, 0, 0, None)))(keys, states, actions, params)
  for i in range(4):
    state_i = jax.tree.map(lambda x: x[i], states)
    single = env.step(keys[i], state_i, actions[i], params)
    np.testing.assert_allclose(batched.obs[i], single.obs, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(batched.reward[i], single.reward)
  assert obs.shape == (4, 6)


def test_auto_reset_step_restarts_the_episode():
  env = GymnaxEnv("CartPole-v1")
  params = env.default_params().replace(max_steps_in_episode=1)
  _, state = env.reset(jax.random.PRNGKey(0), params)
  out = api.auto_reset_step(env, jax.random.PRNGKey(1), state, jnp.int32(0), params)
  assert bool(out.truncated) and not bool(out.terminated)
  assert int(out.state.time) == 0
  assert np.all(np.abs(np.asarray(out.obs)) <= 0.05)  # CartPole's reset draws U(-0.05, 0.05)^4.


def test_spaces():
  expected = {"CartPole-v1": (2, (4,)), "Acrobot-v1": (3, (6,)), "MountainCar-v0": (3, (2,))}
  for name, (n, obs_shape) in expected.items():
    env = GymnaxEnv(name)
    p = env.default_params()
    assert env.action_space(p) == spaces.Discrete(n)
    obs_space = env.observation_space(p)
    assert isinstance(obs_space, spaces.Box) and obs_space.shape == obs_shape
    obs, _ = env.reset(jax.random.PRNGKey(0), p)
    assert obs.shape == obs_shape and obs.dtype == jnp.float32
    assert env.name == name
  pend = GymnaxEnv("Pendulum-v1")
  box = pend.action_space(pend.default_params())
  assert isinstance(box, spaces.Box) and box.shape == (1,)
  np.testing.assert_allclose([box.low, box.high], [-2.0, 2.0])


def test_accepts_a_gymnax_instance():
  env = GymnaxEnv(cartpole.CartPole())
  assert env.name == "CartPole-v1"
  assert env.action_space(env.default_params()).n == 2


def test_bad_input_raises_value_error():
  with pytest.raises(ValueError, match="CartPole-v2.*CartPole-v1"):
    GymnaxEnv("CartPole-v2")
  with pytest.raises(ValueError, match="name_or_env"):
    GymnaxEnv(42)
  with pytest.raises(ValueError, match="observation_space"):
    convert_space(gymnax_spaces.Dict({"a": gymnax_spaces.Discrete(2)}), "observation_space")
  env = GymnaxEnv("CartPole-v1")
  p = env.default_params()
  _, state = env.reset(jax.random.PRNGKey(0), p)
  for bad in (2, -1, jnp.array([0, 1]), 0.5, jnp.float32(1.0)):
    with pytest.raises(ValueError, match="action"):
      env.check_action(bad, p)
  with pytest.raises(ValueError, match="action"):
    env.step(jax.random.PRNGKey(0), state, jnp.int32(3), p)
  env.check_action(1, p)  # Valid ones pass.
  pend = GymnaxEnv("Pendulum-v1")
  pp = pend.default_params()
  with pytest.raises(ValueError, match="action"):
    pend.check_action(jnp.array([5.0]), pp)
  with pytest.raises(ValueError, match="action"):
    pend.check_action(jnp.array(1.0), pp)  # Wrong shape: the box is (1,).
  # Under jit the shape is still checked, at trace time.
  with pytest.raises(ValueError, match="action"):
    jax.jit(env.step)(jax.random.PRNGKey(0), state, jnp.zeros(2, jnp.int32), p)
