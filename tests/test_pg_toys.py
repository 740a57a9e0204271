"""The toys of the npg_igt / harpg reproductions (experiments/papers/_lqr_pg.py, _cartpole_pg.py):
trajectory accounting, the CartPole rollout against gymnax stepped by hand, the linear softmax
policy, batch-mean gradients against independent computations, and the tuning driver."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.papers import _cartpole_pg as cp
from experiments.papers import _lqr_pg as base
from experiments.papers import harpg
from experiments.papers import npg_igt
from pgx_lab.envs import lqr
from pgx_lab.second_order import score_hessian as sh


def test_trajectory_accounting_by_hand():
  # One trajectory each: t+1, and 2t+1 for (N)-HARPG (no Hessian sample at t = 0).
  np.testing.assert_array_equal(base.traj_counts("gpomdp", 4), [1, 2, 3, 4])
  np.testing.assert_array_equal(base.traj_counts("nharpg", 4), [1, 3, 5, 7])
  # Batches 25 + 1: 25, 51, 77, ...; 200 trajectories fit 8 iterations (25 + 7 * 26 = 207 > 200).
  np.testing.assert_array_equal(base.traj_counts("harpg", 3, 25, 1), [25, 51, 77])
  assert base.iterations("harpg", 200, 25, 1) == 7 and base.iterations("npg_igt", 200, 25, 1) == 8
  for m in base.METHODS:
    for budget, b, hb in ((20000, 1, 1), (20000, 250, 2), (5000, 25, 1), (1000, 7, 3)):
      counts = base.traj_counts(m, base.iterations(m, budget, b, hb), b, hb)
      step = b + (hb if m in ("harpg", "nharpg") else 0)
      assert counts[-1] <= budget < counts[-1] + step      # the budget is used, never exceeded
  # ceil(5000 / H), ceil(32 / H) trajectories: the paper's batches on LQR and CartPole.
  assert cp.paper_batches(20) == (250, 2) and cp.paper_batches(200) == (25, 1)


def test_cartpole_rollout_matches_gymnax_stepped_by_hand():
  env = cp.GymnaxEnv("CartPole-v1")
  raw, params = env.gymnax_env, env.default_params()
  theta = jnp.array([0.3, -0.2, 2.0, 0.5, 0.1])
  obs, acts, rew, mask = jax.jit(cp.rollout)(jax.random.PRNGKey(3), theta)
  k_reset, _ = jax.random.split(jax.random.PRNGKey(3))
  o, state = raw.reset_env(k_reset, params)
  length = 0
  for t in range(cp.H):                     # replay the rollout's actions in gymnax itself
    np.testing.assert_allclose(obs[t], o, rtol=1e-5, atol=1e-6)
    o, state, r, done, _ = raw.step_env(k_reset, state, int(acts[t]), params)
    length += 1
    if bool(done):
      break
  np.testing.assert_array_equal(np.asarray(mask), (np.arange(cp.H) < length).astype(np.float32))
  np.testing.assert_array_equal(np.asarray(rew), np.asarray(mask))      # reward 1 while alive
  assert 1 <= length < cp.H                 # this policy drops the pole (the mask is exercised)


def test_linear_softmax_logp_and_j_star():
  theta = jnp.array([0.5, -1.0, 2.0, 0.25, -0.3])
  obs = jax.random.normal(jax.random.PRNGKey(0), (6, 4))
  acts = jnp.array([0, 1, 1, 0, 1, 0])
  logits = jnp.stack([jnp.zeros(6), obs @ theta[:4] + theta[4]], -1)
  ref = jnp.take_along_axis(jax.nn.log_softmax(logits), acts[:, None], -1)[:, 0]
  np.testing.assert_allclose(cp.logp(theta, obs, acts), ref, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(cp.prob_right(theta, obs), jnp.exp(ref) * acts + (1 - jnp.exp(ref))
                             * (1 - acts), rtol=1e-5)
  assert math.isclose(cp.J_STAR, sum(0.99**t for t in range(200)), rel_tol=1e-12)


def test_cartpole_gap_is_j_star_minus_mean_discounted_return():
  toy = cp.cartpole_toy(cp.CARTPOLE_GRIDS)
  thetas = np.array([[0.0] * 5, [0.0, 0.0, 5.0, 5.0, 0.0]], np.float32)
  gap = toy.gap(thetas[None], jax.random.PRNGKey(5))                      # [1, 2]
  keys = jax.random.split(jax.random.PRNGKey(5), cp.EVAL_EPISODES)
  for i, th in enumerate(thetas):
    rets = [float(np.sum(np.asarray(cp.rollout(k, jnp.asarray(th))[2]) * 0.99 ** np.arange(200)))
            for k in keys]
    assert gap.shape == (1, 2)
    np.testing.assert_allclose(gap[0, i], cp.J_STAR - np.mean(rets), rtol=1e-4, atol=1e-3)
  assert 0.0 <= gap[0, 1] < gap[0, 0]      # pushing toward the pole's fall beats the uniform policy


def test_batch_gpomdp_step_is_the_mean_of_single_trajectory_gradients():
  p = lqr.harpg_toy_params()
  toy = base.lqr_toy(p)
  key, alpha, n = jax.random.PRNGKey(4), 0.01, 5
  th1 = jax.jit(base.make_run("gpomdp", toy, 1, batch=n))(alpha, key)[0]
  k_g = jax.random.split(key, 1)[0]                # the scan's key of iteration 0

  def single(k):                                   # GPOMDP of one trajectory, written out
    xs, us, rew = base.rollout(k, jnp.array([base.THETA0]), p)
    rtg = jnp.cumsum((rew * p.gamma ** jnp.arange(p.horizon))[::-1])[::-1]
    score = (us[:, 0] - base.THETA0 * xs[:, 0]) * xs[:, 0] / base.SIGMA**2   # d log pi / d theta
    return jnp.sum(score * rtg)

  g = np.mean([float(single(k)) for k in jax.random.split(k_g, n)])
  np.testing.assert_allclose(th1, base.THETA0 + alpha * g, rtol=1e-5)


def test_lqr_batch_gradient_is_unbiased_against_exact_j():
  p = lqr.harpg_toy_params()
  th, n, key = jnp.array([base.THETA0]), 20000, jax.random.PRNGKey(9)
  logp_fn, rew, _ = base.lqr_toy(p).sample(th, key, n)
  g = float(jax.grad(lambda t: sh.gpomdp_surrogate(logp_fn(t), rew, p.gamma))(th)[0])
  # The same n trajectories one by one (sample splits the key n ways).
  xs, us, rw = jax.vmap(base.rollout, (0, None, None))(jax.random.split(key, n), th, p)
  per = np.asarray(jax.vmap(lambda x, u, r: jax.grad(
      lambda t: sh.gpomdp_surrogate(base._logp_fn(x, u)(t), r, p.gamma))(th)[0])(xs, us, rw))
  np.testing.assert_allclose(g, per.mean(), rtol=1e-4)
  eps = 1e-4
  exact = (base.exact_j(base.THETA0 + eps, p) - base.exact_j(base.THETA0 - eps, p)) / (2 * eps)
  se = per.std() / math.sqrt(n)
  assert abs(g - exact) < 4 * se, (g, exact, se)


def _quadratic_toy():
  """A 1-step toy whose GPOMDP gradient is exactly -2 (theta - 1): J = -(theta - 1)^2."""
  def sample(theta, key, n):
    del theta, key
    return (lambda t: jnp.broadcast_to(-(t[0] - 1.0) ** 2, (n, 1))), jnp.ones((n, 1)), None
  gap = lambda thetas, key: (thetas[..., 0] - 1.0) ** 2
  grid = (0.005, 0.01, 0.05, 1.2)
  return base.Toy("quadratic", np.zeros(1, np.float32), 1.0,
                  {m: grid for m in base.METHODS}, sample, gap)


def test_run_setup_picks_the_best_step_on_tuning_seeds():
  cfg = dict(budget=30, tune_seeds=2, eval_seeds=3, grid=(0, 1, 2, 3))
  out = base.run_setup(_quadratic_toy(), cfg, ("gpomdp",))
  # theta_{t+1} - 1 = (1 - 2 alpha)(theta_t - 1): alpha = 0.05 contracts fastest; 1.2 diverges.
  assert out["steps"]["gpomdp"] == pytest.approx(0.05)
  gaps = ((1 - 2 * 0.05) ** np.arange(1, 31)) ** 2            # after iterations 1..30
  np.testing.assert_allclose(out["final"]["gpomdp"], gaps[27:].mean(), rtol=1e-3)  # > 27 trajs
  assert out["curves"]["gpomdp"].shape == (3, out["checkpoints"].size)
  np.testing.assert_allclose(out["curves"]["gpomdp"][0], gaps[out["checkpoints"] - 1], rtol=1e-3)
  assert out["slopes"]["gpomdp"] < 0.0


def test_bad_input_names_argument():
  toy = _quadratic_toy()
  with pytest.raises(ValueError, match="method"):
    base.make_run("sgd", toy, 3)
  with pytest.raises(ValueError, match="batch"):
    base.make_run("gpomdp", toy, 3, batch=0)
  with pytest.raises(ValueError, match="hessian_batch"):
    base.make_run("nharpg", toy, 3, hessian_batch=1.5)
  with pytest.raises(ValueError, match="hessian_terms"):
    base.make_run("nharpg", toy, 3, hessian_terms="outer")
  with pytest.raises(ValueError, match="size"):
    cp.run_toys("medium")
  with pytest.raises(ValueError, match="diagnostics"):
    cp.run_toys("small", diagnostics=("cartpole_big",))


def test_verdicts_compare_means_over_evaluation_seeds():
  out = {"final": {"reinforce": np.array([1.0, 3.0]), "gpomdp": np.array([0.5, 1.5]),
                   "npg_igt": np.array([0.1, 1.8]), "nharpg": np.array([0.0, 2.0])}}
  assert npg_igt.verdict(out)          # 0.95 < 2 and < 1
  assert not harpg.verdict(out)        # 1.0 is not < 0.95
  out["final"]["npg_igt"] = np.array([0.5, 1.5])
  assert not npg_igt.verdict(out)      # a tie with GPOMDP is not "below"
  out["final"]["nharpg"] = np.array([0.0, 0.8])
  assert harpg.verdict(out)            # 0.4 < 1.0


def test_npg_igt_run_samples_at_the_extrapolated_point():
  # make_run samples at igt.query_point and passes the gradient in; the transform's own grad_fn
  # path must give the same iterates (quadratic toy: the gradient is exactly -2 (theta - 1)).
  from pgx_lab.second_order import igt  # pylint: disable=import-outside-toplevel
  toy, g0 = _quadratic_toy(), 0.3
  ths = np.asarray(jax.jit(base.make_run("npg_igt", toy, 4))(g0, jax.random.PRNGKey(0)))[:, 0]
  tx = igt.npg_igt(lambda t: igt.decaying_step(t, g0))
  th = jnp.zeros(1)
  state = tx.init(th)
  for t in range(4):
    u, state = tx.update(None, state, th, grad_fn=lambda q: 2.0 * (q - 1.0))   # loss gradient
    th = th + u
    np.testing.assert_allclose(ths[t], th[0], rtol=1e-5)


def test_slope_is_nan_when_every_gap_is_exactly_zero():
  toy = _quadratic_toy()._replace(gap=lambda thetas, key: np.zeros(thetas.shape[:-1]))
  out = base.run_setup(toy, dict(budget=30, tune_seeds=1, eval_seeds=2, grid=(0,)), ("gpomdp",))
  assert np.isnan(out["slopes"]["gpomdp"]) and np.all(out["final"]["gpomdp"] == 0.0)


def test_rule_setups_exist_at_both_sizes():
  for size in ("small", "full"):
    assert {"lqr_batch", "cartpole_mlp"} <= set(cp.SETUPS[size])
  assert cp.SETUPS["full"]["cartpole_mlp"][1]["eval_seeds"] >= 5
