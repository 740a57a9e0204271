"""The authors' CartPole set-up of the npg_igt / harpg reproductions (experiments/papers/
_cartpole_pg.py, _lqr_pg.py): the [32, 32] tanh softmax MLP against a direct numpy computation,
garage's linear-feature baseline (features, ridge fit, reward shaping) against hand computations,
and a two-iteration GPOMDP run with the baseline refitted between iterations, stepped by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.papers import _cartpole_pg as cp
from experiments.papers import _lqr_pg as base


def _np_mlp_logits(theta, obs):
  """[..., 2] logits of the MLP from the flat vector, unpacked by hand (W1 4x32, b1, W2 32x32, b2,
  W3 32x2, b3), in float64."""
  t = np.asarray(theta, np.float64)
  w1, b1 = t[:128].reshape(4, 32), t[128:160]
  w2, b2 = t[160:1184].reshape(32, 32), t[1184:1216]
  w3, b3 = t[1216:1280].reshape(32, 2), t[1280:1282]
  h = np.tanh(np.tanh(np.asarray(obs, np.float64) @ w1 + b1) @ w2 + b2)
  return h @ w3 + b3


def test_mlp_logit_and_logp_match_a_direct_computation():
  assert cp.MLP_DIM == 4 * 32 + 32 + 32 * 32 + 32 + 32 * 2 + 2 == 1282
  theta = 0.3 * jax.random.normal(jax.random.PRNGKey(0), (cp.MLP_DIM,))
  obs = jax.random.normal(jax.random.PRNGKey(1), (3, 5, 4))
  acts = jnp.array([[0, 1, 1, 0, 1]] * 3)
  logits = _np_mlp_logits(theta, obs)
  np.testing.assert_allclose(cp.mlp_logit(theta, obs), logits[..., 1] - logits[..., 0],
                             rtol=1e-4, atol=1e-5)
  ref = logits - np.log(np.exp(logits).sum(-1, keepdims=True))           # log softmax
  ref = np.take_along_axis(ref, np.asarray(acts)[..., None], -1)[..., 0]
  np.testing.assert_allclose(cp.logp(theta, obs, acts, cp.mlp_logit), ref, rtol=1e-4, atol=1e-5)


def test_mlp_init_is_glorot_normal_with_zero_biases_and_fixed():
  t = cp.mlp_init(jax.random.PRNGKey(11))
  assert t.shape == (cp.MLP_DIM,) and t.dtype == np.float32
  np.testing.assert_array_equal(t, cp.mlp_init(jax.random.PRNGKey(11)))
  for lo, hi, fan in ((0, 128, (4, 32)), (160, 1184, (32, 32)), (1216, 1280, (32, 2))):
    expected = np.sqrt(2.0 / sum(fan))
    assert abs(t[lo:hi].std() / expected - 1.0) < (0.1 if hi - lo > 500 else 0.3)
  np.testing.assert_array_equal(t[[*range(128, 160), *range(1184, 1216), 1280, 1281]], 0.0)
  toy = cp.cartpole_toy(cp.CARTPOLE_GRIDS, "mlp")
  np.testing.assert_array_equal(toy.theta0, t)
  assert toy.baseline_dim == cp.BASELINE_DIM == 12


def test_baseline_features_by_hand():
  obs = np.array([[[1.0, -2.0, 0.5, 12.0], [0.0, 3.0, -11.0, 1.0], [2.0, 0.0, 0.0, 0.0]]],
                 np.float32)                                                 # [1, 3, 4]
  f = np.asarray(cp.baseline_features(jnp.asarray(obs)))
  assert f.shape == (1, 3, 12)
  o = np.clip(obs[0], -10, 10)
  for h in range(3):
    a = h / 100.0
    np.testing.assert_allclose(f[0, h], np.concatenate([o[h], o[h] ** 2, [a, a**2, a**3, 1.0]]),
                               rtol=1e-6)


def test_shaped_rewards_subtract_the_discounted_baseline_from_every_reward_to_go():
  rng = np.random.default_rng(0)
  rew, b = rng.normal(size=(2, 2, 6))
  mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], np.float64)
  g = 0.9
  shaped = np.asarray(base.shaped_rewards(jnp.asarray(rew), jnp.asarray(mask), jnp.asarray(b), g))
  for i in range(2):
    for h in range(6):
      lhs = sum(g**t * shaped[i, t] for t in range(h, 6))
      rtg = sum(g**t * rew[i, t] * mask[i, t] for t in range(h, 6))
      np.testing.assert_allclose(lhs, (rtg - g**h * b[i, h]) * mask[i, h], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(shaped[1, 3:], 0.0)                 # nothing after the end


def _returns(rew, mask, g):
  """Per-step returns sum_{t>=h} g^(t-h) r_t (garage's discount_cumsum), by a backward loop."""
  out = np.zeros_like(rew)
  for i in range(rew.shape[0]):
    acc = 0.0
    for t in reversed(range(rew.shape[1])):
      acc = rew[i, t] * mask[i, t] + g * acc
      out[i, t] = acc
  return out


def test_fit_baseline_is_least_squares_on_valid_steps():
  rng = np.random.default_rng(1)
  rew = rng.normal(size=(3, 6))
  mask = np.array([[1] * 6, [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], np.float64)
  feats = rng.normal(size=(3, 6, 4))
  c = base.fit_baseline(*(jnp.asarray(x, jnp.float32) for x in (feats, rew, mask)), 0.9)
  y = _returns(rew, mask, 0.9)
  ref = np.linalg.lstsq(feats[mask > 0], y[mask > 0], rcond=None)[0]
  np.testing.assert_allclose(c, ref, rtol=1e-3, atol=1e-4)


def _fixed_toy(obs_rng):
  """Two fixed trajectories (whatever theta and key), H = 4, logp linear in theta [2]:
  logp_h = theta . A_h, so the GPOMDP gradient is mean_i sum_h A_ih w_ih; features [n, H, 2]."""
  a = obs_rng.normal(size=(2, 4, 2)).astype(np.float32)
  rew = obs_rng.normal(size=(2, 4)).astype(np.float32)
  mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], np.float32)
  feats = obs_rng.normal(size=(2, 4, 2)).astype(np.float32)

  def sample(theta, key, n):
    del theta, key
    assert n == 2
    return (lambda t: jnp.asarray(a) @ t), jnp.asarray(rew), jnp.asarray(mask), jnp.asarray(feats)
  toy = base.Toy("fixed", np.zeros(2, np.float32), 0.9, {m: (0.1,) for m in base.METHODS},
                 sample, lambda th, k: np.zeros(th.shape[:-1]), 2)
  return toy, a, rew, mask, feats


def test_gpomdp_with_baseline_predicts_with_the_previous_fit_then_refits():
  toy, a, rew, mask, feats = _fixed_toy(np.random.default_rng(2))
  alpha, g = 0.1, 0.9
  ths = np.asarray(jax.jit(base.make_run("gpomdp", toy, 2, batch=2))(alpha, jax.random.PRNGKey(0)))

  def grad(b):                                   # GPOMDP with weights RTG_h - g^h b_h, by hand
    out = np.zeros(2)
    for i in range(2):
      for h in range(4):
        w = sum(g**t * rew[i, t] * mask[i, t] for t in range(h, 4)) - g**h * b[i, h]
        out += a[i, h] * w * mask[i, h]
    return out / 2

  th1 = alpha * grad(np.zeros((2, 4)))           # iteration 1: no fit yet (coefficients 0)
  np.testing.assert_allclose(ths[0], th1, rtol=1e-4, atol=1e-6)
  y = _returns(rew, mask, g)
  c = np.linalg.lstsq(feats[mask > 0], y[mask > 0], rcond=None)[0]
  th2 = th1 + alpha * grad(feats @ c)            # iteration 2: the fit of batch 1
  np.testing.assert_allclose(ths[1], th2, rtol=1e-3, atol=1e-5)


def test_mlp_rollout_replays_in_gymnax():
  env = cp.GymnaxEnv("CartPole-v1")
  raw, params = env.gymnax_env, env.default_params()
  theta = jnp.asarray(cp.mlp_init(jax.random.PRNGKey(3))) * 3.0
  obs, acts, _, mask = jax.jit(lambda k, t: cp.rollout(k, t, logit_fn=cp.mlp_logit))(
      jax.random.PRNGKey(4), theta)
  k_reset, _ = jax.random.split(jax.random.PRNGKey(4))
  o, state = raw.reset_env(k_reset, params)
  for t in range(int(mask.sum())):
    np.testing.assert_allclose(obs[t], o, rtol=1e-5, atol=1e-6)
    o, state, _, done, _ = raw.step_env(k_reset, state, int(acts[t]), params)
  assert bool(done) or int(mask.sum()) == cp.H


def test_bad_policy_names_argument():
  with pytest.raises(ValueError, match="policy"):
    cp.cartpole_toy(cp.CARTPOLE_GRIDS, "deep")
