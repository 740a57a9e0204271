"""CAPO on its own toy (spec llm_post_training.md sec. 7 (d)): a linear softmax policy, logits =
h^T W, where CAPO's head model is the whole model. Checks (i) the closed-form g_t, s_t, u_t^T F u_t
against jax autodiff of the head, (ii) the predicted KL 0.5 eta^2 s_t^2 against the realised change
of log pi(y_t) for small eta, and Delta J against the realised objective change; plus invariants of
the bandit runs of experiments/papers/_capo_bandit.py. Claim (iii) is the paper module's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.papers import _capo_bandit as bandit
from pgx_lab.second_order import capo

B1, B2, EPS = 0.9, 0.999, 1e-8


def logp_fn(w, h, y):
  """log pi(y | h) = log softmax(h^T W)_y for one context."""
  return jax.nn.log_softmax(h @ w)[y]


def setup(key=0, contexts=8):
  """A bandit instance, one sampled batch, its advantages and a non-empty predictive Adam state."""
  k = jax.random.PRNGKey(key)
  feats, rewards, w0 = (jnp.asarray(x, float) for x in bandit.make_instance(key, contexts))
  h, acts, batch = bandit.sample_batch(jax.random.fold_in(k, 1), w0, feats, rewards)
  adv = bandit.ESTIMATOR.advantage(batch)
  km, ks = jax.random.split(jax.random.fold_in(k, 2))
  state = capo.HeadAdamState(0.1 * jax.random.normal(km, (bandit.ACTIONS, bandit.DIM)),
                             0.01 * jax.random.uniform(ks, (bandit.ACTIONS, bandit.DIM)) + 1e-4,
                             jnp.array(3, jnp.int32))
  return w0, h[:, 0], acts[:, 0], batch, adv, state


def token_steps(w, h, acts, adv, state, optimizer):
  """Each token's own step D_t [N, d, K] in parameter layout, from the autodiff gradient of
  A_t log pi(y_t) and, for "adam", the prospective Adam rule written out here (spec sec. 7)."""
  grads = jax.vmap(jax.grad(lambda w_, h_, y_, a_: a_ * logp_fn(w_, h_, y_)),
                   in_axes=(None, 0, 0, 0))(w, h, acts, adv)
  if optimizer == "sgd":
    return grads
  n = state.count + 1
  g = jnp.swapaxes(grads, 1, 2)  # [N, K, d], rows per action as the state
  m = B1 * state.m + (1 - B1) * g
  s = B2 * state.s + (1 - B2) * g * g
  return jnp.swapaxes((m / (1 - B1 ** n)) / (jnp.sqrt(s / (1 - B2 ** n)) + EPS), 1, 2)


def capo_terms(w, h, acts, batch, state, eta, optimizer):
  cfg = bandit.config((0.0, 0.0))._replace(optimizer=optimizer)
  adv = bandit.ESTIMATOR.advantage(batch)
  return capo.capo_mask(h[:, None], w, None, acts[:, None], adv, batch.mask, state, eta,
                        cfg)[2]["terms"]


def directional(w, h, y, step):
  """(first, second) derivative of log pi(y) along `step` at W, by nested jvp."""
  f = lambda e: logp_fn(w + e * step, h, y)
  df = lambda e: jax.jvp(f, (e,), (1.0,))[1]
  return df(0.0), jax.jvp(df, (0.0,), (1.0,))[1]


def test_head_gradient_matches_autodiff():
  w, h, acts, _, adv, _ = setup()
  p = jax.nn.softmax(h @ w)
  e = jax.nn.one_hot(acts, bandit.ACTIONS)
  closed = capo.token_head_grads(h[:, None], p[:, None], e[:, None], adv[:, None])[:, 0]
  auto = token_steps(w, h, acts, adv, None, "sgd")
  np.testing.assert_allclose(closed, jnp.swapaxes(auto, 1, 2), atol=1e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_s_and_fisher_quadratic_match_autodiff(optimizer):
  """s_t = d/de log pi(y_t; W + e D_t) and u^T F u = -d^2/de^2 of it (the exact head Hessian),
  so H_t = A (s^2 - u^T F u) = A (s^2 + second derivative)."""
  w, h, acts, batch, adv, state = setup(1)
  steps = token_steps(w, h, acts, adv, state, optimizer)
  first, second = jax.vmap(directional, in_axes=(None, 0, 0, 0))(w, h, acts, steps)
  terms = capo_terms(w, h, acts, batch, state, 0.1, optimizer)
  assert np.sum(np.abs(adv) > 0) >= 8
  np.testing.assert_allclose(terms["s"][:, 0], first, rtol=2e-4, atol=1e-4)
  np.testing.assert_allclose(terms["hessian"][:, 0], adv * (first ** 2 + second), rtol=1e-3,
                             atol=1e-3)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_predicted_kl_matches_realised_log_prob_change(optimizer):
  """0.5 (log pi(y_t; W + eta D_t) - log pi(y_t; W))^2 -> KL_t = 0.5 eta^2 s_t^2, error O(eta)."""
  with jax.enable_x64(True):  # the realised change is a difference of nearby log-probs
    w, h, acts, batch, adv, state = setup(2)
    steps = token_steps(w, h, acts, adv, state, optimizer)
    errs = []
    for eta in (1e-2, 1e-3, 1e-4):
      new = jax.vmap(lambda hh, y, st, e=eta: logp_fn(w + e * st, hh, y))(h, acts, steps)
      realised = 0.5 * (new - jax.vmap(lambda hh, y: logp_fn(w, hh, y))(h, acts)) ** 2
      t = capo_terms(w, h, acts, batch, state, eta, optimizer)
      s, kl = np.asarray(t["s"][:, 0]), np.asarray(t["kl"][:, 0])
      live = np.abs(s) > 0.1 * np.median(np.abs(s)[np.abs(np.asarray(adv)) > 0])
      errs.append(np.max(np.abs(realised - kl)[live] / kl[live]))
  assert np.sum(live) >= 8
  assert errs[2] < 1e-2
  assert errs[2] < 0.2 * errs[1] < 0.04 * errs[0]  # shrinks with eta (first order in eta)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_delta_j_matches_realised_token_objective_change(optimizer):
  """A_t (log pi(y_t; W + eta D_t) - log pi(y_t; W)) = eta A s - 0.5 eta^2 A u^T F u + O(eta^3)
  = DeltaJ_t - 0.5 eta^2 A s^2 (DeltaJ_t adds the score outer-product term of the REINFORCE
  Hessian, whose expectation is checked in the next test)."""
  with jax.enable_x64(True):
    w, h, acts, batch, adv, state = setup(3)
    steps = token_steps(w, h, acts, adv, state, optimizer)
    ratios = []
    for eta in (1e-2, 1e-3):
      new = jax.vmap(lambda hh, y, st, e=eta: logp_fn(w + e * st, hh, y))(h, acts, steps)
      realised = adv * (new - jax.vmap(lambda hh, y: logp_fn(w, hh, y))(h, acts))
      t = capo_terms(w, h, acts, batch, state, eta, optimizer)
      second_order = t["delta_j"][:, 0] - 0.5 * eta ** 2 * adv * t["s"][:, 0] ** 2
      first_order = eta * adv * t["s"][:, 0]
      live = np.abs(np.asarray(adv)) > 0
      err2 = np.abs(realised - second_order)[live]
      err1 = np.abs(realised - first_order)[live]
      ratios.append(np.max(err2 / err1))
  assert ratios[1] < 0.05  # the second-order term removes nearly all of the first-order error
  assert ratios[1] < 0.2 * ratios[0]  # and what is left is O(eta^3)


def test_delta_j_expectation_is_realised_expected_reward_change():
  """For a fixed direction D: sum_y pi(y) DeltaJ(y) with A = R(y) equals J(W + eta D) - J(W) up to
  O(eta^3) (the REINFORCE gradient and Hessian identities), per context of a bandit instance."""
  feats, rewards, w = bandit.make_instance(4, 6)
  step = jax.random.normal(jax.random.PRNGKey(5), w.shape)
  eta = 0.05
  j = lambda ww: jnp.sum(jax.nn.softmax(feats @ ww) * rewards, -1)  # [N] per context
  realised = j(w + eta * step) - j(w)
  p = jax.nn.softmax(feats @ w)  # [N, K]
  u = feats @ step  # [N, K], the logit change per unit step
  e = jnp.eye(bandit.ACTIONS)  # every action y as the taken one
  s = jnp.sum((e[None] - p[:, None]) * u[:, None], -1)  # [N, Ky]
  terms = capo.curvature_terms(s, jnp.broadcast_to(u[:, None], s.shape + u.shape[-1:]),
                               jnp.broadcast_to(p[:, None], s.shape + p.shape[-1:]), rewards, eta)
  predicted = jnp.sum(p * terms["delta_j"], -1)
  first = jnp.sum(p * eta * rewards * s, -1)
  err2, err1 = np.abs(predicted - realised), np.abs(first - realised)
  assert np.max(err2) < 0.15 * np.max(err1)
  np.testing.assert_allclose(predicted, realised, atol=0.15 * float(np.max(err1)))


def test_bandit_instance():
  feats, rewards, w0 = bandit.make_instance(5, 16)
  assert feats.shape == (16, bandit.DIM) and w0.shape == (bandit.DIM, bandit.ACTIONS)
  np.testing.assert_array_equal(np.sum(rewards, -1), bandit.N_GOOD)
  np.testing.assert_allclose(bandit.exact_j(w0, feats, rewards), bandit.J_START, atol=1e-4)
  # the uniform policy earns N_GOOD / K
  np.testing.assert_allclose(bandit.exact_j(jnp.zeros_like(w0), feats, rewards),
                             bandit.N_GOOD / bandit.ACTIONS, rtol=1e-6)
  with pytest.raises(ValueError, match="seed"):  # this noisy start saturates below J_START
    bandit.make_instance(6, 16)


def test_bandit_runs_invariants():
  """Same keys: CAPO with huge thresholds = GRPO; CAPO with tiny thresholds drops every token with
  A != 0 and the policy never moves; a zero learning rate keeps J at its start."""
  cfg = {"updates": 6}
  inst = bandit.instances([7] * 4, 8)
  out = bandit.train_runs(inst, jnp.tile(jax.random.PRNGKey(7)[None], (4, 1)), [0.3, 0.3, 0.3, 0.0],
                          [False, True, True, False], [False] * 4,
                          [[0.0, 0.0], [1e30, 1e30], [1e-30, 1e-30], [0.0, 0.0]], cfg)
  feats, rewards, w0 = bandit.make_instance(7, 8)
  j0 = float(bandit.exact_j(w0, feats, rewards))
  np.testing.assert_allclose(out["j"][1], out["j"][0], rtol=1e-6)
  assert np.all(out["rejected"][1] == 0)
  np.testing.assert_allclose(out["j"][2], j0, atol=1e-6)
  np.testing.assert_array_equal(out["rejected"][2], out["pos"][2] + out["neg"][2])
  np.testing.assert_allclose(out["j"][3], j0, atol=1e-6)
  assert abs(out["j"][0][-1] - j0) > 1e-3
