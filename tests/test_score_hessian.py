"""The score-function Hessian estimator: per-trajectory against its definition, and its expectation
(exact, by enumerating every trajectory of a tiny finite-horizon MDP) against the exact Hessian of J
from pgx_lab.envs.tabular."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgx_lab.envs import tabular
from pgx_lab.second_order import score_hessian as sh

S, A, H, GAMMA = 2, 2, 3, 0.9


def _mdp():
  rng = np.random.default_rng(0)
  P = rng.dirichlet(np.ones(S), size=(S, A)).astype(np.float32)
  r = rng.standard_normal((S, A)).astype(np.float32)
  rho = np.array([0.3, 0.7], np.float32)
  return tabular.TabularMDP.create(P, r, rho, GAMMA, horizon=H), P, r, rho


def _all_trajectories(theta, P, r, rho):
  """Every (s_0, a_0, ..., s_{H-1}, a_{H-1}) with its probability: states, actions [N, H],
  rewards [N, H], prob [N]."""
  pi = np.asarray(jax.nn.softmax(theta, -1), np.float64)
  states, actions, probs = [], [], []
  for combo in itertools.product(range(S), range(A), repeat=H):
    s, a = combo[0::2], combo[1::2]
    p = rho[s[0]] * np.prod([pi[s[h], a[h]] for h in range(H)])
    p *= np.prod([P[s[h], a[h], s[h + 1]] for h in range(H - 1)])
    states.append(s); actions.append(a); probs.append(p)
  states, actions = np.array(states, np.int32), np.array(actions, np.int32)
  return states, actions, r[states, actions].astype(np.float32), np.array(probs)


def _logp_fn(states, actions):
  return lambda th: jax.nn.log_softmax(th, -1)[states, actions]


def test_expectation_equals_exact_hessian_of_J():
  mdp, P, r, rho = _mdp()
  theta = jnp.asarray(np.random.default_rng(1).standard_normal((S, A)), jnp.float32)
  states, actions, rewards, probs = _all_trajectories(theta, P, r, rho)
  assert np.isclose(probs.sum(), 1.0)
  exact_j = lambda th: tabular.expected_return(mdp, jax.nn.softmax(th, -1))
  hess = np.asarray(jax.hessian(exact_j)(theta)).reshape(S * A, S * A)
  basis = jnp.eye(S * A).reshape(S * A, S, A)

  def per_traj(s, a, rew):
    return jax.vmap(lambda v: sh.score_hessian_vp(_logp_fn(s, a), theta, v, rew, GAMMA))(basis)

  g, bv = jax.jit(jax.vmap(per_traj))(states, actions, rewards)   # [N, S*A, S, A]
  mean_b = np.einsum("n,nij->ji", probs, np.asarray(bv, np.float64).reshape(-1, S * A, S * A))
  np.testing.assert_allclose(mean_b, hess, rtol=1e-4, atol=1e-4)
  mean_g = np.einsum("n,nsa->sa", probs, np.asarray(g[:, 0], np.float64))
  np.testing.assert_allclose(mean_g, tabular.policy_gradient(mdp, theta), rtol=1e-4, atol=1e-5)
  # The Hessian part alone is biased: the score outer-product term matters on this MDP.
  _, second = jax.vmap(lambda s, a, rew: sh.score_hessian_terms(
      _logp_fn(s, a), theta, basis[0], rew, GAMMA))(states, actions, rewards)
  assert np.abs(np.einsum("n,nsa->sa", probs, np.asarray(second)).ravel() - hess[:, 0]).max() > 1e-2


def test_one_trajectory_matches_definition():
  """B = g grad log p^T + hess Phi, built densely with jax.jacobian / jax.hessian."""
  rng = np.random.default_rng(2)
  theta = jnp.asarray(rng.standard_normal((S, A)), jnp.float32)
  s = jnp.array([0, 1, 1, 0]); a = jnp.array([1, 0, 1, 1]); rew = jnp.array([1.0, -2.0, 0.5, 3.0])
  logp_fn = _logp_fn(s, a)
  flat = lambda f: logp_fn(f.reshape(S, A))
  phi = lambda f: sh.gpomdp_surrogate(flat(f), rew, GAMMA)
  g = jax.grad(phi)(theta.ravel())
  score = jax.grad(lambda f: jnp.sum(flat(f)))(theta.ravel())
  dense = jnp.outer(g, score) + jax.hessian(phi)(theta.ravel())
  v = jnp.asarray(rng.standard_normal((S, A)), jnp.float32)
  g_out, bv = sh.score_hessian_vp(logp_fn, theta, v, rew, GAMMA)
  np.testing.assert_allclose(bv.ravel(), dense @ v.ravel(), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(g_out.ravel(), g, rtol=1e-5, atol=1e-6)
  first, second = sh.score_hessian_terms(logp_fn, theta, v, rew, GAMMA)
  np.testing.assert_allclose((first + second).ravel(), dense @ v.ravel(), rtol=1e-4, atol=1e-5)


def test_batch_mask_and_baseline():
  """A batch [N, H] equals the mean of its rows; masked steps count as absent; a baseline changes
  g and Bv by a term that has zero mean only in expectation (here: checked against the formula)."""
  rng = np.random.default_rng(3)
  theta = jnp.asarray(rng.standard_normal((S, A)), jnp.float32)
  s = jnp.asarray(rng.integers(0, S, (3, 4))); a = jnp.asarray(rng.integers(0, A, (3, 4)))
  rew = jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)
  mask = jnp.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], jnp.float32)
  v = jnp.asarray(rng.standard_normal((S, A)), jnp.float32)
  g, bv = sh.score_hessian_vp(_logp_fn(s, a), theta, v, rew, GAMMA, mask=mask, baseline=0.3)
  rows = [sh.score_hessian_vp(_logp_fn(s[i, :n], a[i, :n]), theta, v, rew[i, :n], GAMMA,
                              baseline=0.3) for i, n in enumerate([4, 2, 1])]
  np.testing.assert_allclose(g, sum(x[0] for x in rows) / 3, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bv, sum(x[1] for x in rows) / 3, rtol=1e-4, atol=1e-5)


def test_reward_to_go_closed_form():
  r = jnp.array([1.0, 2.0, 3.0])
  np.testing.assert_allclose(sh.reward_to_go(r, 0.5), [1 + 1 + 0.75, 1 + 0.75, 0.75])


def test_bad_input_names_argument():
  theta = jnp.zeros((S, A))
  logp_fn = _logp_fn(jnp.array([0, 1]), jnp.array([1, 1]))
  with pytest.raises(ValueError, match="`rewards`"):
    sh.score_hessian_vp(logp_fn, theta, theta, jnp.ones(3))
  with pytest.raises(ValueError, match="`v`"):
    sh.score_hessian_vp(logp_fn, theta, jnp.zeros(4), jnp.ones(2))
  with pytest.raises(ValueError, match="`mask`"):
    sh.score_hessian_vp(logp_fn, theta, theta, jnp.ones(2), mask=jnp.ones(3))
  with pytest.raises(ValueError, match="`logp`"):
    sh.gpomdp_surrogate(jnp.ones((1, 2, 3)), jnp.ones((1, 2, 3)))
