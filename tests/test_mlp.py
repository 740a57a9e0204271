"""MLP policies and their distributions: log_prob/entropy against scipy, sampling, shapes, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special
from scipy import stats

from pgx_lab.models import mlp


def _rng(seed=0):
  return np.random.default_rng(seed)


def test_categorical_log_prob_and_entropy_match_scipy():
  logits = _rng().normal(size=(3, 5, 4)).astype(np.float32) * 2.0
  actions = _rng(1).integers(0, 4, size=(3, 5)).astype(np.int32)
  dist = mlp.Categorical(jnp.asarray(logits))
  p = special.softmax(logits.astype(np.float64), axis=-1)
  want_logp = np.log(np.take_along_axis(p, actions[..., None], -1)[..., 0])
  np.testing.assert_allclose(mlp.log_prob(dist, jnp.asarray(actions)), want_logp, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(mlp.entropy(dist), stats.entropy(p, axis=-1), rtol=1e-5, atol=1e-6)
  # A -inf logit (an impossible action) gives a finite entropy, not nan.
  masked = mlp.Categorical(jnp.array([0.0, 0.0, -jnp.inf]))
  np.testing.assert_allclose(mlp.entropy(masked), np.log(2.0), rtol=1e-6)
  np.testing.assert_array_equal(mlp.mode(dist), logits.argmax(-1))


def test_gaussian_log_prob_and_entropy_match_scipy():
  rng = _rng(2)
  mean = rng.normal(size=(6, 3)).astype(np.float32)
  log_std = rng.uniform(-1.0, 0.5, size=(6, 3)).astype(np.float32)
  actions = rng.normal(size=(6, 3)).astype(np.float32)
  dist = mlp.DiagGaussian(jnp.asarray(mean), jnp.asarray(log_std))
  std = np.exp(log_std.astype(np.float64))
  want = stats.norm.logpdf(actions, mean, std).sum(-1)
  np.testing.assert_allclose(mlp.log_prob(dist, jnp.asarray(actions)), want, rtol=1e-5, atol=1e-5)
  want_h = [stats.multivariate_normal(mean[i], np.diag(std[i] ** 2)).entropy() for i in range(6)]
  np.testing.assert_allclose(mlp.entropy(dist), want_h, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(mlp.mode(dist), mean)


def test_log_prob_gradients_match_closed_forms():
  logits = jnp.array([0.3, -1.0, 2.0])
  g = jax.grad(lambda l: mlp.log_prob(mlp.Categorical(l), jnp.int32(1)))(logits)
  # d log softmax(l)_a / d l = onehot(a) - softmax(l).
  np.testing.assert_allclose(g, np.eye(3)[1] - special.softmax(np.asarray(logits)), rtol=1e-5)
  mean, log_std, a = jnp.array([0.5, -0.2]), jnp.array([0.1, -0.3]), jnp.array([1.0, 0.4])
  gm, gs = jax.grad(lambda m, s: mlp.log_prob(mlp.DiagGaussian(m, s), a), (0, 1))(mean, log_std)
  var = np.exp(2 * np.asarray(log_std))
  z2 = (np.asarray(a - mean)) ** 2 / var
  np.testing.assert_allclose(gm, np.asarray(a - mean) / var, rtol=1e-5)
  np.testing.assert_allclose(gs, z2 - 1.0, rtol=1e-5)


def test_sampling_matches_the_distribution():
  n = 40_000
  logits = jnp.array([1.0, 0.0, -1.0, 0.5])
  keys = jax.random.split(jax.random.PRNGKey(0), n)
  draws = jax.vmap(mlp.sample, (0, None))(keys, mlp.Categorical(logits))
  assert draws.dtype == jnp.int32 and draws.shape == (n,)
  p = special.softmax(np.asarray(logits))
  freq = np.bincount(np.asarray(draws), minlength=4) / n
  assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n)), (freq, p)
  mean, log_std = jnp.array([1.0, -2.0]), jnp.array([0.0, -1.0])
  x = np.asarray(jax.vmap(mlp.sample, (0, None))(keys, mlp.DiagGaussian(mean, log_std)))
  std = np.exp(np.asarray(log_std))
  assert np.all(np.abs(x.mean(0) - np.asarray(mean)) <= 5 * std / np.sqrt(n)), x.mean(0)
  np.testing.assert_allclose(x.std(0), std, rtol=0.03)


def test_categorical_policy_shapes_and_value_head():
  obs = jnp.ones((7, 4))
  model = mlp.CategoricalPolicy(3, hidden_sizes=(16, 8), value_head=True)
  params = model.init(jax.random.PRNGKey(0), obs[0])
  assert isinstance(params, dict)
  dist, value = model.apply(params, obs)
  assert dist.logits.shape == (7, 3) and value.shape == (7,)
  dist1, value1 = model.apply(params, obs[0])  # Unbatched obs works with the same params.
  assert dist1.logits.shape == (3,) and value1.shape == ()
  np.testing.assert_allclose(dist1.logits, dist.logits[0], rtol=1e-5, atol=1e-7)
  # Separate torsos: the value does not depend on the actor's parameters.
  p2 = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 1.0 if "actor_torso" in jax.tree_util.keystr(path) else x, params)
  np.testing.assert_allclose(model.apply(p2, obs)[1], value, rtol=1e-6)
  # Output gain 0.01: the initial policy is close to uniform.
  np.testing.assert_allclose(mlp.entropy(dist), np.log(3.0), atol=1e-2)
  no_value = mlp.CategoricalPolicy(3, hidden_sizes=(16,))
  d, v = no_value.apply(no_value.init(jax.random.PRNGKey(0), obs), obs)
  assert v is None and d.logits.shape == (7, 3)


@pytest.mark.parametrize("state_dependent", [False, True])
def test_gaussian_policy_std(state_dependent):
  obs = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
  model = mlp.GaussianPolicy(2, hidden_sizes=(16,), state_dependent_std=state_dependent,
                             log_std_init=-0.5, value_head=True)
  params = model.init(jax.random.PRNGKey(0), obs)
  dist, value = model.apply(params, obs)
  assert dist.mean.shape == (5, 2) and dist.log_std.shape == (5, 2) and value.shape == (5,)
  # At init the log-std is log_std_init (exactly without state dependence, nearly with it).
  np.testing.assert_allclose(dist.log_std, -0.5, atol=0.0 if not state_dependent else 0.1)
  spread = float(jnp.max(dist.log_std) - jnp.min(dist.log_std))
  assert (spread > 0) == state_dependent
  # Entropy of a D-dim Gaussian with log-std s: D (s + (1 + log 2 pi) / 2).
  np.testing.assert_allclose(mlp.entropy(dist),
                             np.sum(np.asarray(dist.log_std) + 0.5 * (1 + np.log(2 * np.pi)), -1),
                             rtol=1e-6)
  if state_dependent:  # Far-out log-stds are clipped to the bounds.
    big = jax.tree.map(lambda x: x * 1e4, params)
    ls = model.apply(big, obs * 10.0)[0].log_std
    assert float(ls.min()) >= -20.0 and float(ls.max()) <= 2.0


def test_jit_and_vmap():
  model = mlp.GaussianPolicy(2, hidden_sizes=(8,))
  params = model.init(jax.random.PRNGKey(0), jnp.zeros(3))
  obs = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
  keys = jax.random.split(jax.random.PRNGKey(2), 4)

  def act(key, o):
    dist, _ = model.apply(params, o)
    a = mlp.sample(key, dist)
    return a, mlp.log_prob(dist, a)

  a, logp = jax.jit(jax.vmap(act))(keys, obs)
  assert a.shape == (4, 2) and logp.shape == (4,)
  a0, logp0 = act(keys[0], obs[0])
  np.testing.assert_allclose(a[0], a0, rtol=1e-5)
  np.testing.assert_allclose(logp[0], logp0, rtol=1e-5)


def test_bad_input_raises_value_error():
  cat = mlp.Categorical(jnp.zeros((3, 4)))
  with pytest.raises(ValueError, match="action"):
    mlp.log_prob(cat, jnp.zeros(3))  # float ids
  with pytest.raises(ValueError, match="action"):
    mlp.log_prob(cat, jnp.zeros((3, 1), jnp.int32))
  gauss = mlp.DiagGaussian(jnp.zeros((3, 2)), jnp.zeros((3, 2)))
  with pytest.raises(ValueError, match="action"):
    mlp.log_prob(gauss, jnp.zeros((3,)))
  with pytest.raises(ValueError, match="action"):
    mlp.log_prob(gauss, jnp.zeros((3, 2), jnp.int32))
  with pytest.raises(ValueError, match="log_std"):
    mlp.entropy(mlp.DiagGaussian(jnp.zeros((3, 2)), jnp.zeros((2,))))
  with pytest.raises(ValueError, match="dist"):
    mlp.sample(jax.random.PRNGKey(0), (jnp.zeros(3),))
  with pytest.raises(ValueError, match="num_actions"):
    mlp.CategoricalPolicy(0)
  with pytest.raises(ValueError, match="action_dim"):
    mlp.GaussianPolicy(2.0)
  with pytest.raises(ValueError, match="hidden_sizes"):
    mlp.CategoricalPolicy(2, hidden_sizes=(8, 0))
  with pytest.raises(ValueError, match="activation"):
    mlp.GaussianPolicy(2, activation="sigmoid")
  with pytest.raises(ValueError, match="log_std_bounds"):
    mlp.GaussianPolicy(2, log_std_bounds=(1.0, -1.0))
  model = mlp.CategoricalPolicy(2, hidden_sizes=(4,))
  with pytest.raises(ValueError, match="obs"):
    model.init(jax.random.PRNGKey(0), jnp.zeros(3, jnp.int32))
  with pytest.raises(ValueError, match="obs"):
    model.init(jax.random.PRNGKey(0), jnp.float32(0.0))
