"""The 2-D point mass: dynamics by hand, blocking obstacles, goals, time limit, the expert."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgx_lab.envs import point_mass as pm

ENV = pm.PointMass()
KEY = jax.random.PRNGKey(0)
NO_OBSTACLES = dict(obstacle_centers=np.zeros((0, 2)), obstacle_radii=())
# Three overlapping discs: a wall across the arena between the starts and the goal, with passages
# of width 0.25 at the top and bottom.
WALL = dict(obstacle_centers=((0.2, 0.45), (0.2, 0.0), (0.2, -0.45)), obstacle_radii=(0.25,) * 3,
            goals=((0.8, 0.0),), start_low=(-0.9, -0.3), start_high=(-0.6, 0.3), horizon=80)
THREE = dict(obstacle_centers=((0.0, 0.0), (0.45, 0.55), (0.4, -0.5)),
             obstacle_radii=(0.3, 0.15, 0.2), goals=((0.85, 0.0), (0.0, 0.75), (0.0, -0.75)),
             start_low=(-0.9, -0.9), start_high=(-0.5, 0.9), horizon=80)


def _state(pos, goal, t=0):
  return pm.PointMassState(jnp.asarray(pos, jnp.float32), jnp.asarray(goal, jnp.float32),
                           jnp.int32(0), jnp.int32(t))


def test_one_step_by_hand():
  params = pm.make_params(**NO_OBSTACLES, goals=((0.8, 0.5),), dt=0.1, max_speed=2.0)
  out = ENV.step(KEY, _state((0.1, 0.2), (0.8, 0.5)), jnp.array([0.5, -1.0]), params)
  # pos + dt * max_speed * a = (0.1 + 0.1, 0.2 - 0.2).
  np.testing.assert_allclose(out.obs, [0.2, 0.0, 0.8, 0.5], atol=1e-6)
  np.testing.assert_allclose(out.reward, -np.hypot(0.6, 0.5), rtol=1e-6)
  assert int(out.state.t) == 1 and not out.terminated and not out.truncated
  # Out-of-box actions are clipped to [-1, 1]^2.
  out = ENV.step(KEY, _state((0.1, 0.2), (0.8, 0.5)), jnp.array([3.0, -0.25]), params)
  np.testing.assert_allclose(out.state.pos, [0.3, 0.15], atol=1e-6)


def test_wall_stop_and_slide_by_hand():
  params = pm.make_params(**NO_OBSTACLES, goals=((0.0, 0.0),), dt=0.1, max_speed=1.0)
  out = ENV.step(KEY, _state((0.95, 0.0), (0.0, 0.0)), jnp.array([1.0, 1.0]), params)
  # x reaches the wall (1 - MARGIN) after a fraction s = 0.049 / 0.1 of the move; the remaining
  # (1 - s) * (0.1, 0.1) loses its x part and slides: y = 0.049 + 0.051 = 0.1.
  np.testing.assert_allclose(out.state.pos, [1.0 - pm.MARGIN, 0.1], atol=1e-6)


def test_obstacle_stops_head_on_slides_and_cannot_be_tunnelled():
  params = pm.make_params(obstacle_centers=((0.0, 0.0),), obstacle_radii=(0.3,),
                          goals=((0.8, 0.0),), dt=0.1, max_speed=1.0)
  out = ENV.step(KEY, _state((-0.35, 0.0), (0.8, 0.0)), jnp.array([1.0, 0.0]), params)
  np.testing.assert_allclose(out.state.pos, [-0.3 - pm.MARGIN, 0.0], atol=1e-6)
  # At an angle: stops on the disc, then slides along it, ending outside it but further on than
  # the contact point and no further than the wanted displacement.
  p0 = np.array([-0.36, 0.05])
  pos = np.asarray(ENV.step(KEY, _state(p0, (0.8, 0.0)), jnp.array([1.0, 0.5]), params).state.pos)
  hit = np.linalg.norm(pos)
  assert 0.3 <= hit <= 0.3 + 2 * pm.MARGIN and pos[1] > 0.05 + 0.02
  assert np.linalg.norm(pos - p0) <= 0.1 * np.hypot(1.0, 0.5) + 1e-6
  # A thin disc (radius 0.02) in the way of a long step (0.4) blocks it.
  thin = pm.make_params(obstacle_centers=((0.0, 0.0),), obstacle_radii=(0.02,),
                        goals=((0.8, 0.0),), dt=0.1, max_speed=4.0)
  out = ENV.step(KEY, _state((-0.2, 0.0), (0.8, 0.0)), jnp.array([1.0, 0.0]), thin)
  np.testing.assert_allclose(out.state.pos, [-0.02 - pm.MARGIN, 0.0], atol=1e-6)


def test_random_actions_never_enter_obstacles_or_leave_the_arena():
  params = pm.make_params(obstacle_centers=((0.0, 0.0), (0.25, 0.3), (-0.5, 0.5), (0.6, -0.4),
                                            (-0.3, -0.6)),
                          obstacle_radii=(0.3, 0.15, 0.05, 0.2, 0.03), goals=((0.9, 0.9),),
                          goal_radius=0.01, start_low=(-1.0, -1.0), start_high=(1.0, 1.0),
                          dt=0.1, max_speed=2.0, horizon=1000)

  def episode(key):
    k0, k1 = jax.random.split(key)
    _, state = ENV.reset(k0, params)
    actions = jax.random.uniform(k1, (300, 2), minval=-1.5, maxval=1.5)

    def body(state, a):
      out = ENV.step(key, state, a, params)
      return out.state, out.state.pos

    _, pos = jax.lax.scan(body, state, actions)
    return jnp.concatenate([state.pos[None], pos])

  pos = np.asarray(jax.jit(jax.vmap(episode))(jax.random.split(KEY, 128)))   # [128, 301, 2]
  dist = np.linalg.norm(pos[..., None, :] - np.asarray(params.obstacle_centers), axis=-1)
  assert np.all(dist >= np.asarray(params.obstacle_radii))
  assert np.all(np.abs(pos) <= 1.0)
  # ... and the walk does touch them (a test that never collides would prove nothing).
  assert np.mean(np.any(dist < np.asarray(params.obstacle_radii) + 0.01, axis=-1)) > 0.01


def test_reaching_the_goal_terminates_with_the_right_reward():
  goals = ((0.8, 0.5), (0.8, -0.5))
  for reward_type, want in (("dense", -0.05), ("sparse", 1.0)):
    params = pm.make_params(goals=goals, goal_radius=0.1, reward_type=reward_type)
    out = ENV.step(KEY, _state((0.65, 0.5), goals[0]), jnp.array([1.0, 0.0]), params)
    np.testing.assert_allclose(out.reward, want, atol=1e-6)
    assert out.terminated and not out.truncated
    miss = ENV.step(KEY, _state((0.55, 0.5), goals[0]), jnp.array([1.0, 0.0]), params)
    assert not miss.terminated
    np.testing.assert_allclose(miss.reward, -0.15 if reward_type == "dense" else 0.0, atol=1e-6)
  # Goal-conditioned: the other goal does not count; otherwise any goal counts.
  cond = pm.make_params(goals=goals, goal_conditioned=True)
  free = pm.make_params(goals=goals, goal_conditioned=False)
  near_other = _state((0.65, -0.5), goals[0])
  assert not ENV.step(KEY, near_other, jnp.array([1.0, 0.0]), cond).terminated
  out = ENV.step(KEY, near_other, jnp.array([1.0, 0.0]), free)
  assert out.terminated and out.obs.shape == (2,)


def test_truncation_at_horizon():
  params = pm.make_params(horizon=5)
  _, state = ENV.reset(KEY, params)
  step = jax.jit(ENV.step)
  flags = []
  for _ in range(5):
    out = step(KEY, state, jnp.zeros(2), params)
    state = out.state
    flags.append((bool(out.terminated), bool(out.truncated)))
  assert flags == [(False, False)] * 4 + [(False, True)]
  # Reaching the goal on the last step is a termination, not a truncation.
  out = step(KEY, _state((0.65, 0.5), (0.8, 0.5), t=4), jnp.array([1.0, 0.0]), params)
  assert bool(out.terminated) and not bool(out.truncated)


def _success_rate(params, policy, n=128):
  def episode(key):
    _, state = ENV.reset(key, params)

    def body(c, _):
      state, done = c
      out = ENV.step(key, state, policy(state, params), params)
      keep = lambda a, b: jnp.where(done, a, b)
      return (jax.tree.map(keep, state, out.state), done | out.terminated), None

    (_, done), _ = jax.lax.scan(body, (state, jnp.array(False)), None, params.horizon)
    return done

  return float(np.mean(jax.jit(jax.vmap(episode))(jax.random.split(KEY, n))))


def _straight_line(state, params):
  d = state.goal - state.pos
  return d / jnp.maximum(jnp.linalg.norm(d), 1e-12)


def test_expert_reaches_goals_around_obstacles():
  # Measured (module docstring): 100% on these layouts, 128 fixed starts each. The expert and the
  # seeded starts are deterministic, so the assertion is on an exact rate; 0.95 leaves room only
  # for a few float-level differences. The straight-line controller (sliding along obstacles) gets
  # 0% on WALL, so the threshold separates an expert that steers around obstacles from one that
  # does not.
  rates = {name: _success_rate(pm.make_params(**kw), pm.expert_action)
           for name, kw in (("default", {}), ("wall", WALL), ("three", THREE))}
  assert min(rates.values()) >= 0.95, rates
  assert _success_rate(pm.make_params(**WALL), _straight_line) < 0.5
  # Its actions are in the action box.
  _, state = ENV.reset(KEY, pm.make_params(**WALL))
  a = pm.expert_action(state, pm.make_params(**WALL))
  assert a.shape == (2,) and np.all(np.abs(np.asarray(a)) <= 1.0)


def test_reset_samples_goals_and_free_starts():
  params = pm.make_params(**THREE)
  obs, states = jax.vmap(ENV.reset, (0, None))(jax.random.split(KEY, 2000), params)
  pos = np.asarray(states.pos)
  assert obs.shape == (2000, 4)
  np.testing.assert_allclose(obs[:, 2:], np.asarray(params.goals)[np.asarray(states.goal_index)])
  counts = np.bincount(np.asarray(states.goal_index), minlength=3)
  assert np.all(np.abs(counts - 2000 / 3) < 5 * np.sqrt(2000 * (1 / 3) * (2 / 3)))
  assert np.all(pos >= np.asarray(params.start_low)) and np.all(pos <= np.asarray(params.start_high))
  dist = np.linalg.norm(pos[:, None] - np.asarray(params.obstacle_centers), axis=-1)
  assert np.all(dist > np.asarray(params.obstacle_radii) + pm.MARGIN)


def test_jit_and_vmap():
  params = pm.make_params(**THREE)
  keys = jax.random.split(KEY, 16)
  actions = jax.random.uniform(jax.random.PRNGKey(1), (16, 2), minval=-1.0, maxval=1.0)
  _, states = jax.vmap(ENV.reset, (0, None))(keys, params)
  batched = jax.jit(jax.vmap(ENV.step, (0, 0, 0, None)))(keys, states, actions, params)
  reset, step = jax.jit(ENV.reset), jax.jit(ENV.step)
  for i in range(0, 16, 5):
    _, s = reset(keys[i], params)
    one = step(keys[i], s, actions[i], params)
    np.testing.assert_allclose(batched.obs[i], one.obs, atol=1e-6)
    np.testing.assert_allclose(batched.reward[i], one.reward, atol=1e-6)
  # vmap over params: a batch of tasks that differ in the obstacle's position.
  many = jax.tree.map(lambda *x: jnp.stack(x), *[
      pm.make_params(obstacle_centers=((0.0, y),)) for y in (-0.2, 0.0, 0.2)])
  out = jax.jit(jax.vmap(ENV.step, (None, None, None, 0)))(KEY, _state((-0.35, 0.0), (0.8, 0.5)),
                                                  jnp.array([1.0, 0.0]), many)
  assert out.obs.shape == (3, 4)
  np.testing.assert_allclose(out.obs[1, :2], [-0.3 - pm.MARGIN, 0.0], atol=1e-6)


def test_invalid_action_raises():
  params = ENV.default_params()
  _, state = ENV.reset(KEY, params)
  for bad in (jnp.array([jnp.nan, 0.0]), jnp.zeros(3), jnp.zeros((1, 2)), jnp.array([1, 0])):
    with pytest.raises(ValueError, match="`action`"):
      ENV.step(KEY, state, bad, params)


def test_make_params_validation():
  with pytest.raises(ValueError, match="`goals`"):
    pm.make_params(goals=((0.1, 0.0),))                 # inside the default disc
  with pytest.raises(ValueError, match="`goals`"):
    pm.make_params(goals=(0.8, 0.0))                    # not [G, 2]
  with pytest.raises(ValueError, match="`obstacle_radii`"):
    pm.make_params(obstacle_radii=(-0.1,))
  with pytest.raises(ValueError, match="`reward_type`"):
    pm.make_params(reward_type="shaped")
  with pytest.raises(ValueError, match="`start_low`"):
    pm.make_params(start_low=(-0.1, -0.1), start_high=(0.1, 0.1))   # all inside the disc
  with pytest.raises(ValueError, match="`dt`"):
    pm.make_params(dt=0.0)
  with pytest.raises(ValueError, match="`horizon`"):
    pm.make_params(horizon=0)
