"""The LQR toy: exact returns against Monte Carlo, scipy and hand-derived closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from pgx_lab.envs import lqr

ENV = lqr.LQR()


def _nd_params(horizon=30, gamma=0.95):
  """A random 3-state, 2-action system (open loop unstable: rho(A) > 1/sqrt(gamma))."""
  rng = np.random.default_rng(0)
  A = rng.normal(size=(3, 3)) * 0.7
  B = rng.normal(size=(3, 2))
  Q = np.diag([1.0, 0.5, 2.0])
  R = np.array([[1.0, 0.2], [0.2, 0.5]])
  return lqr.make_params(A, B, Q, R, W=np.diag([0.01, 0.02, 0.01]), x0_cov=np.eye(3) * 0.5,
                         gamma=gamma, horizon=horizon)


def _mc_returns(params, K, log_sigma, n, seed=0):
  """[n] discounted returns sum_{t<H} gamma^t r_t of rollouts of the env under the policy."""

  def episode(key):
    k0, key = jax.random.split(key)
    _, state = ENV.reset(k0, params)

    def body(c, t):
      state, key = c
      key, k_a, k_s = jax.random.split(key, 3)
      u = lqr.policy_sample(k_a, K, log_sigma, state.x)
      out = ENV.step(k_s, state, u, params)
      return (out.state, key), params.gamma**t * out.reward

    _, r = jax.lax.scan(body, (state, key), jnp.arange(params.horizon, dtype=jnp.float32))
    return jnp.sum(r)

  return np.asarray(jax.jit(jax.vmap(episode))(jax.random.split(jax.random.PRNGKey(seed), n)),
                    np.float64)


def test_infinite_horizon_return_matches_monte_carlo_1d():
  # Default system (A = B = Q = R = 1, W = 0.01, Sigma0 = 1, gamma = 0.9), K = 0.3, sigma = 0.5,
  # rolled out for H = 150 steps.
  params = lqr.make_params(1.0, 1.0, 1.0, 1.0, W=0.01, x0_cov=1.0, gamma=0.9, horizon=150)
  k, sigma, n = 0.3, 0.5, 20_000
  K = jnp.array([[k]])
  exact = float(lqr.exact_return(K, sigma, params))
  ret = _mc_returns(params, K, jnp.log(jnp.float32(sigma)), n)
  # Truncation bound: L = 0.7 so Var(x_t) <= Sigma0 + (W + sigma^2) / (1 - L^2) for all t, hence
  # E[c_t] <= (Q + R k^2) * that + R sigma^2 and the dropped tail sum_{t>=H} gamma^t E[c_t] is at
  # most gamma^H / (1 - gamma) times the bound (about 3e-6 here).
  var_bound = 1.0 + (0.01 + sigma**2) / (1.0 - 0.7**2)
  tail = 0.9**150 / 0.1 * ((1.0 + k**2) * var_bound + sigma**2)
  # The mean of n i.i.d. returns is close to normal (CLT): a correct implementation lands outside
  # 5 standard errors with probability about 6e-7, while a wrong noise term is caught: writing
  # 1 / (1 - gamma) for gamma / (1 - gamma) in front of tr(P N) moves J by 0.51, about 18 SE
  # (SE = 0.028 here).
  se = ret.std(ddof=1) / np.sqrt(n)
  assert abs(ret.mean() - exact) <= 5 * se + tail, (ret.mean(), exact, se)


def test_finite_horizon_return_matches_monte_carlo_nd():
  params = _nd_params(horizon=30)
  K_star, _ = lqr.optimal_gain(params)
  K = K_star + 0.1 * jax.random.normal(jax.random.PRNGKey(3), K_star.shape)
  log_sigma = jnp.log(jnp.array([0.3, 0.2]))
  n = 8_000
  exact = float(lqr.exact_return(K, jnp.exp(log_sigma), params, finite_horizon=True))
  ret = _mc_returns(params, K, log_sigma, n, seed=1)
  se = ret.std(ddof=1) / np.sqrt(n)
  # No truncation here: the exact value sums the same H steps as the rollout. 5 SE as above.
  assert abs(ret.mean() - exact) <= 5 * se, (ret.mean(), exact, se)


def test_exact_return_against_scipy_lyapunov_and_finite_horizon_limit():
  params = _nd_params()
  K, _ = lqr.optimal_gain(params)
  K = K + 0.05
  g, sigma = 0.95, np.array([0.3, 0.1])
  A, B, Q, R, W, S0 = (np.asarray(v, np.float64) for v in (params.A, params.B, params.Q, params.R,
                                                            params.W, params.x0_cov))
  Kn = np.asarray(K, np.float64)
  L = A - B @ Kn
  # P = Qk + g L'PL  <=>  X = a X a' + q with a = sqrt(g) L' (scipy's convention).
  P = scipy.linalg.solve_discrete_lyapunov(np.sqrt(g) * L.T, Q + Kn.T @ R @ Kn)
  Su = np.diag(sigma**2)
  J = -(np.trace(P @ S0) + (np.trace(R @ Su) + g * np.trace(P @ (W + B @ Su @ B.T))) / (1 - g))
  np.testing.assert_allclose(lqr.exact_return(K, jnp.asarray(sigma), params), J, rtol=1e-4)
  np.testing.assert_allclose(lqr.cost_matrix(K, params), P, rtol=1e-4, atol=1e-5)
  # The covariance recursion over a long horizon converges to the Lyapunov-based value.
  long = params.replace(horizon=600)
  np.testing.assert_allclose(lqr.exact_return(K, jnp.asarray(sigma), long, finite_horizon=True),
                             J, rtol=1e-4)


@pytest.mark.parametrize("nd", [False, True])
def test_riccati_against_scipy(nd):
  params = _nd_params() if nd else ENV.default_params()
  g = float(params.gamma)
  A, B, Q, R = (np.asarray(v, np.float64) for v in (params.A, params.B, params.Q, params.R))
  As, Bs = np.sqrt(g) * A, np.sqrt(g) * B
  P = scipy.linalg.solve_discrete_are(As, Bs, Q, R)
  K = np.linalg.solve(R + Bs.T @ P @ Bs, Bs.T @ P @ As)
  K_star, P_star = lqr.optimal_gain(params)
  np.testing.assert_allclose(P_star, P, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(K_star, K, rtol=1e-4, atol=1e-5)
  K_jit, _ = jax.jit(lqr.optimal_gain)(params)
  np.testing.assert_allclose(K_jit, K, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("a,b,q,r,gamma", [(1.0, 1.0, 1.0, 1.0, 0.9), (1.2, 0.5, 2.0, 0.3, 0.95)])
def test_1d_closed_forms_by_hand(a, b, q, r, gamma):
  w, s0, sigma, k = 0.04, 0.7, 0.4, 0.8 * a / b
  params = lqr.make_params(a, b, q, r, W=w, x0_cov=s0, gamma=gamma)
  # Scaled DARE in 1-D: bt^2 P^2 + (r - q bt^2 - at^2 r) P - q r = 0 with at^2 = g a^2,
  # bt^2 = g b^2 (for a = b = q = r = 1, g = 0.9: 0.9 P^2 - 0.8 P - 1 = 0, P = 1.58841).
  at2, bt2 = gamma * a * a, gamma * b * b
  c1 = r - q * bt2 - at2 * r
  P_star = (-c1 + np.sqrt(c1**2 + 4 * bt2 * q * r)) / (2 * bt2)
  k_star = gamma * b * P_star * a / (r + gamma * b * b * P_star)
  K_star, P_code = lqr.optimal_gain(params)
  np.testing.assert_allclose(P_code[0, 0], P_star, rtol=1e-5)
  np.testing.assert_allclose(K_star[0, 0], k_star, rtol=1e-5)
  # J(k, sigma) = -(P s0 + (r sigma^2 + g P (w + b^2 sigma^2)) / (1 - g)), P = (q + r k^2) / (1 - g L^2).
  L = a - b * k
  P = (q + r * k * k) / (1 - gamma * L * L)
  noise = s0 + gamma * (w + b * b * sigma**2) / (1 - gamma)
  J = -(P * s0 + (r * sigma**2 + gamma * P * (w + b * b * sigma**2)) / (1 - gamma))
  np.testing.assert_allclose(lqr.exact_return(jnp.array([[k]]), sigma, params), J, rtol=1e-5)
  # dJ/dk by the quotient rule: dP/dk = (2 r k (1 - g L^2) - (q + r k^2) 2 g L b) / (1 - g L^2)^2.
  dP = (2 * r * k * (1 - gamma * L * L) - (q + r * k * k) * 2 * gamma * L * b) / (
      1 - gamma * L * L)**2
  grad = jax.grad(lqr.exact_return)(jnp.array([[k]], jnp.float32), sigma, params)
  np.testing.assert_allclose(grad[0, 0], -dP * noise, rtol=1e-4)
  # dJ/dsigma = -2 sigma (r + g P b^2) / (1 - g).
  dsig = jax.grad(lqr.exact_return, argnums=1)(jnp.array([[k]]), jnp.float32(sigma), params)
  np.testing.assert_allclose(dsig, -2 * sigma * (r + gamma * P * b * b) / (1 - gamma), rtol=1e-4)


@pytest.mark.parametrize("nd", [False, True])
def test_gradient_vanishes_at_optimum(nd):
  params = _nd_params() if nd else ENV.default_params()
  sigma = jnp.full((params.B.shape[1],), 0.3)
  K_star, _ = lqr.optimal_gain(params)
  deltas = 0.05 * jax.random.normal(jax.random.PRNGKey(0), (16,) + K_star.shape)
  Ks = jnp.concatenate([K_star[None], K_star + deltas])
  grads = jax.jit(jax.vmap(jax.grad(lqr.exact_return), (0, None, None)))(Ks, sigma, params)
  g = np.abs(np.asarray(grads)).max(axis=(1, 2))
  # The gradient is linear in a small displacement: 0.05 away it is O(0.05 * Hessian); at K* it
  # is float32 rounding, orders of magnitude smaller.
  assert g[0] < 1e-3 * g[1:].min(), g
  J_star = lqr.exact_return(K_star, sigma, params)
  returns = jax.jit(jax.vmap(lqr.exact_return, (0, None, None)))
  for scale in (0.05, 0.3):
    Js = np.asarray(returns(K_star + scale * jax.random.normal(
        jax.random.PRNGKey(1), (32,) + K_star.shape), sigma, params))
    stable = ~np.isnan(Js)       # NaN marks a non-stabilising K (checked in the vmap test below)
    assert stable.sum() >= 8
    assert np.all(Js[stable] <= J_star + 1e-5 * abs(float(J_star)))


def test_optimal_return_and_its_sigma_zero_limit():
  params = ENV.default_params()
  K_star, P_star = lqr.optimal_gain(params)
  p, g = float(P_star[0, 0]), 0.9
  # J*(0) = -P* (Sigma0 + g W / (1 - g)).
  np.testing.assert_allclose(lqr.optimal_return(params), -p * (1.0 + g * 0.01 / (1 - g)), rtol=1e-5)
  np.testing.assert_allclose(lqr.optimal_return(params, 0.3),
                             lqr.exact_return(K_star, 0.3, params), rtol=1e-6)
  assert lqr.optimal_return(params, 0.3) < lqr.optimal_return(params, 0.0)


def test_unstable_gain_raises_and_is_nan_when_traced():
  params = ENV.default_params()
  bad = jnp.array([[-1.0]])        # sqrt(0.9) * |1 + 1| = 1.90 > 1
  with pytest.raises(ValueError, match="`K`"):
    lqr.exact_return(bad, 0.1, params)
  with pytest.raises(ValueError, match="`K`"):
    lqr.cost_matrix(bad, params)
  with pytest.raises(ValueError, match="`K`"):
    lqr.exact_return(jnp.zeros((1, 2)), 0.1, params)
  with pytest.raises(ValueError, match="`sigma`"):
    lqr.exact_return(jnp.zeros((1, 1)), jnp.zeros(3), params)
  assert np.isnan(jax.jit(lqr.exact_return)(bad, 0.1, params))
  # The finite-horizon value needs no stability and stays finite.
  assert np.isfinite(lqr.exact_return(bad, 0.1, params.replace(horizon=10), finite_horizon=True))


def test_jit_vmap_over_gains_and_stability_check():
  params = _nd_params()
  Ks = 1.5 * jax.random.normal(jax.random.PRNGKey(5), (64, 2, 3))
  rho = np.array([lqr.spectral_radius(K, params) for K in Ks])
  stable = np.asarray(jax.jit(jax.vmap(lqr.is_stabilizing, (0, None)))(Ks, params))
  np.testing.assert_array_equal(stable, rho < 1.0)
  assert 0 < stable.sum() < len(Ks)
  Js = jax.jit(jax.vmap(lqr.exact_return, (0, None, None)))(Ks, 0.2, params)
  for K, J, ok in zip(Ks, np.asarray(Js), stable):
    if ok:
      np.testing.assert_allclose(J, lqr.exact_return(K, 0.2, params), rtol=1e-5)
    else:
      assert np.isnan(J)


def test_policy_logp_and_sampling():
  K = jnp.array([[0.5, -1.0, 0.2], [0.1, 0.3, -0.4]])
  log_sigma = jnp.log(jnp.array([0.3, 0.8]))
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
  u = jax.random.normal(jax.random.PRNGKey(1), (5, 2))
  want = [scipy.stats.multivariate_normal.logpdf(np.asarray(u[i]), -np.asarray(K @ x[i]),
                                                 np.diag([0.09, 0.64])) for i in range(5)]
  np.testing.assert_allclose(lqr.policy_logp(K, log_sigma, x, u), want, rtol=1e-5)
  np.testing.assert_allclose(lqr.policy_logp(K[:1], jnp.log(0.3), x, u[:, :1]),
                             scipy.stats.norm.logpdf(u[:, 0], -(x @ K[0]), 0.3), rtol=1e-5)
  xs = jnp.broadcast_to(x[0], (40_000, 3))
  us = np.asarray(lqr.policy_sample(jax.random.PRNGKey(2), K, log_sigma, xs))
  se = np.array([0.3, 0.8]) / np.sqrt(len(us))
  assert np.all(np.abs(us.mean(0) + np.asarray(K @ x[0])) < 5 * se)
  np.testing.assert_allclose(us.std(0), [0.3, 0.8], rtol=0.02)  # SE of a std is ~0.35%
  with pytest.raises(ValueError, match="`x`"):
    lqr.policy_logp(K, log_sigma, jnp.zeros((5, 2)), u)
  with pytest.raises(ValueError, match="`log_sigma`"):
    lqr.policy_sample(jax.random.PRNGKey(0), K, jnp.zeros(3), x)
  with pytest.raises(ValueError, match="`u`"):
    lqr.policy_logp(K, log_sigma, x, jnp.zeros((5, 3)))


def test_environment_step_by_hand_and_time_limit():
  params = lqr.make_params([[1.0, 0.1], [0.0, 0.9]], [[0.0], [1.0]], np.diag([1.0, 2.0]), 0.5,
                           W=0.0, gamma=0.9, horizon=3)
  x = jnp.array([1.0, -2.0])
  state = lqr.LQRState(x=x, t=jnp.int32(0))
  out = ENV.step(jax.random.PRNGKey(0), state, jnp.array([0.4]), params)
  np.testing.assert_allclose(out.obs, [1.0 - 0.2, -1.8 + 0.4], rtol=1e-6)
  np.testing.assert_allclose(out.reward, -(1.0 + 2.0 * 4.0 + 0.5 * 0.16), rtol=1e-6)
  flags = []
  for _ in range(3):
    out = jax.jit(ENV.step)(jax.random.PRNGKey(0), state, jnp.array([0.0]), params)
    state = out.state
    flags.append((bool(out.terminated), bool(out.truncated)))
  assert flags == [(False, False), (False, False), (False, True)]
  with pytest.raises(ValueError, match="`action`"):
    ENV.step(jax.random.PRNGKey(0), state, jnp.zeros(2), params)
  with pytest.raises(ValueError, match="`action`"):
    ENV.step(jax.random.PRNGKey(0), state, jnp.array([jnp.nan]), params)


def test_reset_distributions_and_state_clip():
  toy = lqr.harpg_toy_params()
  x0 = np.asarray(jax.vmap(lambda k: ENV.reset(k, toy)[0])(
      jax.random.split(jax.random.PRNGKey(0), 20_000)))
  assert x0.min() >= -1.0 and x0.max() <= 1.0 and x0.min() < -0.99 and x0.max() > 0.99
  np.testing.assert_allclose(x0.var(), 1.0 / 3.0, rtol=0.03)
  gauss = _nd_params()
  x0 = np.asarray(jax.vmap(lambda k: ENV.reset(k, gauss)[0])(
      jax.random.split(jax.random.PRNGKey(1), 20_000)))
  np.testing.assert_allclose(np.cov(x0.T), 0.5 * np.eye(3), atol=0.03)
  # An unstable gain blows up, but the clip keeps the rollout finite in float32.
  params = ENV.default_params().replace(horizon=200)
  ret = _mc_returns(params, jnp.array([[-3.0]]), jnp.log(jnp.float32(0.1)), 4)
  assert np.all(np.isfinite(ret)) and np.all(ret < -1e8)


def test_make_params_validation():
  with pytest.raises(ValueError, match="`R`"):
    lqr.make_params(1.0, 1.0, 1.0, 0.0)
  with pytest.raises(ValueError, match="`Q`"):
    lqr.make_params(1.0, 1.0, -1.0, 1.0)
  with pytest.raises(ValueError, match="`gamma`"):
    lqr.make_params(1.0, 1.0, 1.0, 1.0, gamma=1.0)
  with pytest.raises(ValueError, match="`B`"):
    lqr.make_params(np.eye(2), np.ones((3, 1)), np.eye(2), 1.0)
  with pytest.raises(ValueError, match="`A`"):
    lqr.make_params(np.ones((2, 3)), np.ones((2, 1)), np.eye(2), 1.0)
  with pytest.raises(ValueError, match="`init_dist`"):
    lqr.make_params(1.0, 1.0, 1.0, 1.0, init_dist="cauchy")
  with pytest.raises(ValueError, match="`horizon`"):
    lqr.make_params(1.0, 1.0, 1.0, 1.0, horizon=0)
  with pytest.raises(ValueError, match="`W`"):
    lqr.make_params(np.eye(2), np.ones((2, 1)), np.eye(2), 1.0, W=[[1.0, 2.0], [0.0, 1.0]])
