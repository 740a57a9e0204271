"""Tabular MDPs: exact gradients against autodiff and against GPOMDP samples, value iteration,
Bellman equations, the Environment API, and bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pgx_lab
from pgx_lab.envs import api
from pgx_lab.envs import tabular as tab
from pgx_lab.envs import tabular_generators as gen
from pgx_lab.estimators import presets

S, A, D = 6, 3, 4


def _garnet(horizon=None, gamma=0.9, noise=0.0, seed=0):
  return gen.garnet(jax.random.PRNGKey(seed), S, A, 3, gamma=gamma, horizon=horizon,
                    reward_noise=noise)


def _params(linear, seed=1):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  if linear:
    return jax.random.normal(k1, (D,)), jax.random.normal(k2, (S, A, D))
  return jax.random.normal(k1, (S, A)), None


@pytest.mark.parametrize("horizon", [None, 5])
@pytest.mark.parametrize("linear", [False, True])
def test_closed_form_gradient_equals_autodiff(horizon, linear):
  mdp = _garnet(horizon)
  theta, phi = _params(linear)
  exact = jax.jit(tab.policy_gradient)(mdp, theta, phi)
  auto = jax.jit(jax.grad(lambda th: tab.expected_return(mdp, tab.policy_probs(th, phi))))(theta)
  assert exact.shape == theta.shape
  assert float(jnp.max(jnp.abs(auto))) > 1e-2       # a non-trivial gradient
  np.testing.assert_allclose(exact, auto, atol=1e-4, rtol=1e-4)


def _gpomdp_samples(mdp, theta, phi, gamma, horizon, num, key):
  """Per-trajectory GPOMDP gradients -grad loss_i [B, ...], -grad of the batch loss, the
  discounted returns [B], and the largest gap between the sampler's logp and log pi_theta."""
  probs = tab.policy_probs(theta, phi)
  ro = tab.sample_trajectories(key, mdp, probs, num, horizon)
  logp_of = lambda th, s, a: jnp.log(tab.policy_probs(th, phi))[s, a]
  logp_gap = jnp.max(jnp.abs(ro.logp - logp_of(theta, ro.states, ro.actions)))
  est = presets.gpomdp(gamma)

  def loss(th, s, a, r, m):
    return est(logp_of(th, s, a), pgx_lab.SequenceBatch(mask=m, rewards=r))[0]

  per_traj = jax.vmap(lambda s, a, r, m: -jax.grad(loss)(theta, s[None], a[None], r[None], m[None]))
  samples = per_traj(ro.states, ro.actions, ro.rewards, ro.mask)
  batch = -jax.grad(loss)(theta, ro.states, ro.actions, ro.rewards, ro.mask)
  returns = jnp.sum(ro.rewards * gamma ** jnp.arange(horizon), -1)
  return samples, batch, returns, logp_gap


@pytest.mark.parametrize("case,linear", [("finite", False), ("truncated", True)])
def test_gpomdp_mean_equals_closed_form_gradient(case, linear):
  theta, phi = _params(linear, seed=2)
  num = 20_000
  if case == "finite":
    gamma, horizon = 0.8, 5
    mdp = _garnet(horizon, gamma, noise=0.5)
    truncated = mdp
  else:
    # Discounted MDP truncated at T: GPOMDP is unbiased for the truncated objective
    # J_T = E[sum_{t<T} gamma^t r_t], whose exact gradient is that of the same MDP with horizon T.
    # Rewards lie in [0, 1] and |grad log pi| <= 2 max|phi|, so |grad J - grad J_T| is at most
    # about gamma^T T / (1 - gamma)^2 * 2 max|phi| ~ 2e-5 for gamma = 0.5, T = 25 (checked
    # below at 1e-5: the bound is loose), far below the standard errors (~1e-3).
    gamma, horizon = 0.5, 25
    mdp = _garnet(None, gamma, noise=0.5)
    truncated = mdp.replace(horizon=horizon)
  exact = tab.policy_gradient(truncated, theta, phi)
  np.testing.assert_allclose(exact, tab.policy_gradient(mdp, theta, phi), atol=1e-5)
  run = jax.jit(functools.partial(_gpomdp_samples, gamma=gamma, horizon=horizon, num=num))
  samples, batch, returns, logp_gap = run(mdp, theta, phi, key=jax.random.PRNGKey(3))
  assert float(logp_gap) < 1e-5
  # The sampler draws from the MDP: the mean return is within 5 standard errors of J_T (CLT).
  returns = np.asarray(returns, np.float64)
  j = float(tab.expected_return(truncated, tab.policy_probs(theta, phi)))
  assert abs(returns.mean() - j) < 5 * returns.std(ddof=1) / np.sqrt(num)
  samples = np.asarray(samples, np.float64)
  mean = samples.mean(0)
  # The batch loss averages the per-trajectory ones.
  np.testing.assert_allclose(batch, mean, atol=1e-4)
  se = samples.std(0, ddof=1) / np.sqrt(num)
  # The B per-trajectory gradients are i.i.d. with mean grad J (GPOMDP is unbiased), so by the CLT
  # each coordinate of their mean is ~ N(grad J, se^2): a 5-se band fails with probability
  # ~6e-7 per coordinate (~1e-5 over the <= 18 coordinates), and the keys are fixed anyway.
  # 1e-6 absorbs float32 rounding where se = 0 (coordinates with no randomness).
  assert np.max(se) < 0.1 * np.max(np.abs(exact))     # the band is narrow enough to mean something
  np.testing.assert_array_less(np.abs(mean - np.asarray(exact)), 5 * se + 1e-6)
  # The test can fail: the gradient of the undiscounted objective lies far outside the band
  # (more than 10 se away in some coordinate for these seeds).
  wrong = tab.policy_gradient(mdp.replace(horizon=horizon, gamma=jnp.float32(1.0)), theta, phi)
  assert np.max(np.abs(mean - np.asarray(wrong)) / (se + 1e-6)) > 10


def _np(mdp):
  """P, r, rho, gamma as float64 numpy arrays, for independent reference computations."""
  return (np.asarray(mdp.P, np.float64), np.asarray(mdp.r, np.float64),
          np.asarray(mdp.rho, np.float64), float(mdp.gamma))


def _backup(P, r, gamma, v_next):
  """r + gamma sum_s' P(s'|s, a) v_next(s') for v_next [S] or [H, S]."""
  return r + gamma * np.einsum("sat,...t->...sa", P, v_next)


def _shift(v):
  """[V_1, ..., V_{H-1}, 0] from [V_0, ..., V_{H-1}]."""
  return np.concatenate([v[1:], np.zeros((1,) + v.shape[1:])])


@pytest.mark.parametrize("horizon", [None, 5])
def test_value_iteration_is_optimal(horizon):
  mdp = _garnet(horizon, seed=4)
  P, r, _, gamma = _np(mdp)
  opt = jax.jit(tab.value_iteration)(mdp)
  thetas = 2.0 * jax.random.normal(jax.random.PRNGKey(5), (64, S, A))
  js = jax.jit(jax.vmap(lambda th: tab.expected_return(mdp, tab.policy_probs(th))))(thetas)
  assert np.all(np.asarray(js) <= float(opt.j) + 1e-5)
  assert float(opt.j) - float(np.max(js)) > 1e-3          # random policies are not optimal
  np.testing.assert_allclose(tab.expected_return(mdp, opt.probs), opt.j, rtol=1e-5)
  # Bellman optimality: Q* = r + gamma P V*, V* = max_a Q*, with V*_H = 0 in the finite case.
  v, q = np.asarray(opt.v, np.float64), np.asarray(opt.q, np.float64)
  np.testing.assert_allclose(v, q.max(-1), rtol=1e-6)
  np.testing.assert_allclose(q, _backup(P, r, gamma, v if horizon is None else _shift(v)),
                             atol=1e-5)


@pytest.mark.parametrize("horizon", [None, 5])
def test_evaluation_satisfies_bellman_equations(horizon):
  mdp = _garnet(horizon, seed=6)
  P, r, rho, gamma = _np(mdp)
  probs = tab.policy_probs(jax.random.normal(jax.random.PRNGKey(7), (S, A)))
  vals, occ = jax.jit(lambda m, p: (tab.evaluate(m, p), tab.occupancy(m, p)))(mdp, probs)
  pi = np.asarray(probs, np.float64)
  v, q, occ = (np.asarray(x, np.float64) for x in (vals.v, vals.q, occ))
  p_pi = np.einsum("sa,sat->st", pi, P)
  np.testing.assert_allclose(v, np.sum(pi * q, -1), atol=1e-5)
  np.testing.assert_allclose(q, _backup(P, r, gamma, v if horizon is None else _shift(v)),
                             atol=1e-5)
  if horizon is None:
    # Occupancy against the truncated power series (1 - gamma) sum_t gamma^t rho P_pi^t.
    d, mu = np.zeros(S), rho
    for t in range(400):
      d, mu = d + (1 - gamma) * gamma ** t * mu, mu @ p_pi
    np.testing.assert_allclose(occ, d, atol=1e-6)
  else:
    mu = [rho]
    for _ in range(horizon - 1):
      mu.append(mu[-1] @ p_pi)
    np.testing.assert_allclose(occ, np.stack(mu), atol=1e-6)


def test_environment_api():
  mdp = _garnet(horizon=3).replace(obs="index")
  assert mdp.default_params() is mdp
  assert mdp.action_space(mdp).n == A and mdp.observation_space(mdp).n == S

  @jax.jit
  def episode(key):
    obs, state = mdp.reset(key, mdp)
    outs = []
    for t in range(3):
      outs.append(mdp.step(jax.random.fold_in(key, t), state, jnp.int32(1), mdp))
      state = outs[-1].state
    return obs, state, outs

  obs, state0, outs = episode(jax.random.PRNGKey(0))
  assert obs.dtype == jnp.int32 and obs.shape == ()
  s = int(obs)
  for t, out in enumerate(outs):
    assert float(mdp.P[s, 1, out.state.s]) > 0             # a possible successor
    assert float(out.reward) == pytest.approx(float(mdp.r[s, 1]))
    assert int(out.obs) == int(out.state.s) and int(out.state.t) == t + 1
    assert not bool(out.terminated) and bool(out.truncated) == (t == 2)
    s = int(out.state.s)
  # One-hot observations, and a vmap over a batch of MDPs (params) with auto-reset.
  keys = jax.random.split(jax.random.PRNGKey(1), 4)
  mdps = jax.tree.map(lambda *x: jnp.stack(x), *[_garnet(seed=i) for i in range(4)])

  @jax.jit
  def batched(keys, mdps):
    obs, states = jax.vmap(mdps.reset)(keys, mdps)
    step = functools.partial(api.auto_reset_step, mdps)
    return obs, jax.vmap(step)(keys, states, jnp.zeros(4, jnp.int32), mdps)

  obs, out = batched(keys, mdps)
  assert obs.shape == (4, S) and out.obs.shape == (4, S) and out.reward.shape == (4,)
  np.testing.assert_array_equal(obs.sum(-1), 1.0)
  assert mdps.observation_space(_garnet()).shape == (S,)


def test_terminal_states_end_episodes():
  lock = gen.combination_lock(3, 2, combination=[0, 1, 0], obs="index")
  _, state = lock.reset(jax.random.PRNGKey(0), lock)
  out = lock.step(jax.random.PRNGKey(1), state, jnp.int32(1), lock)     # wrong: dead state
  assert bool(out.terminated) and not bool(out.truncated) and int(out.obs) == 4
  ro = tab.sample_trajectories(jax.random.PRNGKey(2), lock, jnp.full((5, 2), 0.5), 200)
  ended = np.asarray(ro.terminated, float)[:, :-1]
  alive = np.cumprod(np.concatenate([np.ones((200, 1)), 1 - ended], 1), 1)
  np.testing.assert_array_equal(ro.mask, alive)
  np.testing.assert_array_equal(ro.terminated.sum(1), 1)             # every episode ends once
  assert set(np.asarray(ro.rewards).ravel().tolist()) <= {0.0, 1.0}


def test_bad_input_names_argument():
  mdp = _garnet()
  P, r, rho = mdp.P, mdp.r, mdp.rho
  with pytest.raises(ValueError, match="`P`"):
    tab.TabularMDP.create(P * 0.9, r, rho, 0.9)
  with pytest.raises(ValueError, match="`P`"):
    tab.TabularMDP.create(P[:, :, :-1], r, rho, 0.9)
  with pytest.raises(ValueError, match="`r`"):
    tab.TabularMDP.create(P, r[:, :-1], rho, 0.9)
  with pytest.raises(ValueError, match="`rho`"):
    tab.TabularMDP.create(P, r, rho[:-1], 0.9)
  with pytest.raises(ValueError, match="`rho`"):
    tab.TabularMDP.create(P, r, rho * 2, 0.9)
  with pytest.raises(ValueError, match="`gamma`"):
    tab.TabularMDP.create(P, r, rho, 1.0)
  with pytest.raises(ValueError, match="`horizon`"):
    tab.TabularMDP.create(P, r, rho, 0.9, horizon=0)
  with pytest.raises(ValueError, match="`obs`"):
    tab.TabularMDP.create(P, r, rho, 0.9, obs="pixels")
  with pytest.raises(ValueError, match="`terminal`"):
    tab.TabularMDP.create(P, r, rho, 0.9, terminal=jnp.arange(S) == 0)
  with pytest.raises(ValueError, match="`probs`"):
    tab.evaluate(mdp, jnp.full((S, A + 1), 1.0 / (A + 1)))
  with pytest.raises(ValueError, match="`theta`"):
    tab.policy_probs(jnp.zeros(D + 1), jnp.zeros((S, A, D)))
  with pytest.raises(ValueError, match="`horizon`"):
    tab.sample_trajectories(jax.random.PRNGKey(0), mdp, jnp.full((S, A), 1.0 / A), 4)
  _, state = mdp.reset(jax.random.PRNGKey(0), mdp)
  with pytest.raises(ValueError, match="`action`"):
    mdp.step(jax.random.PRNGKey(0), state, jnp.int32(A), mdp)
  with pytest.raises(ValueError, match="`action`"):
    mdp.step(jax.random.PRNGKey(0), state, jnp.float32(0), mdp)
  with pytest.raises(ValueError, match="`action`"):
    jax.jit(mdp.step)(jax.random.PRNGKey(0), state, jnp.zeros(2, jnp.int32), mdp)
