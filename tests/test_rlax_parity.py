"""Parity with rlax (the reference implementation the house style follows).

Each test draws shared random inputs from a fixed seed and compares pgx_lab with the matching rlax
function, value and gradient:
  - PPO's clipped surrogate: `rlax.clipped_surrogate_pg_loss` vs `reference.clipped_surrogate_loss`
    and the full `presets.ppo(whiten=False)` estimator;
  - the policy-gradient loss: `rlax.policy_gradient_loss` vs the on-policy `Estimator`;
  - GAE: `rlax.truncated_generalized_advantage_estimation` vs `advantages.gae`;
  - entropy: `rlax.entropy_loss` vs `likelihood.categorical_entropy` and `penalties.entropy_bonus`.

Inputs come from numpy (no compilation) and each comparison is one jitted function that returns
both sides, so a test compiles once: XLA compilation is what costs time here.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rlax

from pgx_lab import SequenceBatch
from pgx_lab.estimators import advantage_parts
from pgx_lab.estimators import advantages
from pgx_lab.estimators import aggregation
from pgx_lab.estimators import likelihood
from pgx_lab.estimators import penalties
from pgx_lab.estimators import presets
from pgx_lab.estimators import reference
from pgx_lab.estimators import reference_parts
from pgx_lab.estimators.estimator import Estimator

# rlax's softmax helpers (used inside policy_gradient_loss and entropy_loss) warn that they will
# move to distrax; that is rlax's business, not pgx_lab's.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Rlax softmax will be deprecated:PendingDeprecationWarning")

RTOL = 1e-5
ATOL = 1e-6


def _normal(seed, shape, scale=1.0):
  return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _randint(seed, shape, high):
  return jnp.asarray(np.random.default_rng(seed).integers(0, high, shape), jnp.int32)


def _both_value_and_grad(ours, theirs, x):
  """(value, grad) of `ours` and of `theirs` at `x`, from one jitted computation."""

  @jax.jit
  def both(x):
    return jax.value_and_grad(ours)(x), jax.value_and_grad(theirs)(x)

  return both(x)


def _assert_same(ours, theirs):
  (v_ours, g_ours), (v_theirs, g_theirs) = ours, theirs
  np.testing.assert_allclose(v_ours, v_theirs, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(g_ours, g_theirs, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------------------------
# Clipped surrogate (PPO)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.1, 0.2, 0.3])
def test_clipped_surrogate_value_and_grad_match_rlax(eps):
  t = 64
  # Log-ratios with std 0.4: ratios spread well outside [1 - eps, 1 + eps] on both sides.
  log_ratio = _normal(0, (t,), 0.4)
  adv = _normal(1, (t,))
  r = np.exp(np.asarray(log_ratio))
  assert np.any(r > 1 + eps) and np.any(r < 1 - eps)

  def ours(lr):
    return jnp.mean(reference.clipped_surrogate_loss(jnp.exp(lr), adv, eps))

  def theirs(lr):
    return rlax.clipped_surrogate_pg_loss(jnp.exp(lr), adv, eps)

  out_ours, out_theirs = _both_value_and_grad(ours, theirs, log_ratio)
  _assert_same(out_ours, out_theirs)
  # Some gradients are exactly zero (clipped tokens), others are not.
  g = np.asarray(out_ours[1])
  assert np.any(g == 0.0) and np.any(g != 0.0)


@pytest.mark.parametrize("eps", [0.1, 0.2])
def test_ppo_preset_on_one_row_matches_rlax(eps):
  t = 48
  old_logp = -jnp.abs(_normal(2, (1, t), 2.0)) - 0.1
  log_ratio = _normal(3, (1, t), 0.3)
  adv = _normal(4, (1, t))
  batch = SequenceBatch(mask=jnp.ones((1, t), jnp.float32), old_logp=old_logp, advantages=adv)
  est = presets.ppo(eps, whiten=False)

  def ours(logp):
    return est(logp, batch)[0]

  def theirs(logp):
    # token_mean over a single all-valid row is the mean over t, as in rlax.
    return rlax.clipped_surrogate_pg_loss(jnp.exp(logp[0] - old_logp[0]), adv[0], eps)

  logp = old_logp + log_ratio
  _assert_same(*_both_value_and_grad(ours, theirs, logp))

  # The clip-fraction metric counts exactly the tokens whose gradient the clip removed.
  r = np.exp(np.asarray(log_ratio[0]))
  a = np.asarray(adv[0])
  expected_frac = np.mean(((r > 1 + eps) & (a > 0)) | ((r < 1 - eps) & (a < 0)))
  assert expected_frac > 0
  _, metrics = jax.jit(est)(logp, batch)
  np.testing.assert_allclose(metrics["clip_fraction"], expected_frac, rtol=1e-6)


def test_ppo_preset_on_many_rows_is_mean_of_rlax_rows():
  b, t, eps = 5, 16, 0.2
  old_logp = -jnp.abs(_normal(5, (b, t), 2.0)) - 0.1
  logp = old_logp + _normal(6, (b, t), 0.3)
  adv = _normal(7, (b, t))
  batch = SequenceBatch(mask=jnp.ones((b, t), jnp.float32), old_logp=old_logp, advantages=adv)
  est = presets.ppo(eps, whiten=False)

  def ours(logp):
    return est(logp, batch)[0]

  def theirs(logp):
    # Every row has T valid tokens, so the token mean is the mean of the per-row means.
    rows = jax.vmap(lambda r, a: rlax.clipped_surrogate_pg_loss(r, a, eps))(
        jnp.exp(logp - old_logp), adv)
    return jnp.mean(rows)

  _assert_same(*_both_value_and_grad(ours, theirs, logp))


# ---------------------------------------------------------------------------------------------
# Policy-gradient loss (REINFORCE, on policy)
# ---------------------------------------------------------------------------------------------


def _pg_inputs(b=3, t=10, a=6):
  return _normal(10, (b, t, a), 1.5), _randint(11, (b, t), a), _normal(12, (b, t))


def _on_policy_estimator():
  return Estimator(advantage=advantage_parts.precomputed(), reference=reference_parts.on_policy(),
                   aggregate=aggregation.token_mean, name="pg")


def test_policy_gradient_loss_matches_rlax_with_unit_weights():
  logits, actions, adv = _pg_inputs()
  w = jnp.ones(actions.shape, jnp.float32)
  est = _on_policy_estimator()
  batch = SequenceBatch(mask=w, advantages=adv)

  def ours(lg):
    return est(likelihood.token_logp(lg, actions), batch)[0]

  def theirs(lg):
    # All rows have T valid tokens: token_mean over [B, T] = mean over rows of rlax's row mean.
    return jnp.mean(jax.vmap(rlax.policy_gradient_loss)(lg, actions, adv, w))

  _assert_same(*_both_value_and_grad(ours, theirs, logits))


def test_policy_gradient_loss_matches_rlax_with_a_binary_mask():
  logits, actions, adv = _pg_inputs(b=1, t=12)
  t = actions.shape[1]
  w = jnp.asarray([[1, 1, 0, 1, 1, 1, 0, 0, 1, 1, 0, 1]], jnp.float32)
  n_valid = 8.0
  est = _on_policy_estimator()
  batch = SequenceBatch(mask=w, advantages=adv)

  def ours(lg):
    return est(likelihood.token_logp(lg, actions), batch)[0]

  def theirs(lg):
    # rlax averages w * loss over all T; token_mean divides by sum(w): rescale by T / sum(w).
    return rlax.policy_gradient_loss(lg[0], actions[0], adv[0], w[0]) * t / n_valid

  out_ours, out_theirs = _both_value_and_grad(ours, theirs, logits)
  _assert_same(out_ours, out_theirs)
  # Masked time steps get no gradient at all; the others do.
  g = np.asarray(out_ours[1])[0]
  masked = np.asarray(w[0]) == 0
  assert np.all(g[masked] == 0.0)
  assert np.all(np.any(g[~masked] != 0.0, axis=-1))


def test_token_logp_matches_rlax_softmax_logprob():
  logits, actions, _ = _pg_inputs()
  ours, theirs = jax.jit(lambda lg: (likelihood.token_logp(lg, actions),
                                     rlax.softmax().logprob(actions, lg)))(logits)
  np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------------------------
# GAE
# ---------------------------------------------------------------------------------------------


def test_gae_matches_rlax_per_row_for_several_lambdas():
  b, t = 4, 12
  rewards = _normal(20, (b, t))
  values = _normal(21, (b, t + 1))
  gamma = 0.97
  # Episode ends (discount 0) inside a row, at the last step, at the first two steps, none.
  ends = np.zeros((b, t), np.float32)
  ends[0, 3] = ends[0, 8] = 1.0
  ends[1, t - 1] = 1.0
  ends[2, 0] = ends[2, 1] = 1.0
  discounts = jnp.asarray(gamma * (1.0 - ends))
  lambdas = (0.0, 0.5, 0.95, 1.0)

  @jax.jit
  def both(rewards, values, discounts):
    out = []
    for lam in lambdas:
      ours = advantages.gae(rewards, values, discounts, lam)
      theirs = jax.vmap(
          lambda r, d, v, lam=lam: rlax.truncated_generalized_advantage_estimation(r, d, lam, v))(
              rewards, discounts, values)
      out.append((ours, theirs))
    return out

  for lam, (ours, theirs) in zip(lambdas, both(rewards, values, discounts)):
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL, err_msg=f"lambda={lam}")
  # An episode end cuts the recursion: with lambda = 1 the advantage at the step of a terminal
  # is its one-step TD error r_t - V_t (discount 0, nothing after it leaks in).
  ours_l1 = np.asarray(both(rewards, values, discounts)[-1][0])
  np.testing.assert_allclose(ours_l1[0, 3], rewards[0, 3] - values[0, 3], rtol=1e-5)


def test_gae_part_in_ppo_matches_rlax():
  """`presets.ppo(advantage='gae')`: its loss equals rlax's surrogate on rlax's GAE."""
  b, t, lam, eps = 2, 8, 0.9, 0.2
  rewards = _normal(22, (b, t))
  values = _normal(23, (b, t + 1))
  discounts = jnp.full((b, t), 0.99).at[0, 4].set(0.0)
  old_logp = -jnp.abs(_normal(24, (b, t))) - 0.1
  logp = old_logp + _normal(25, (b, t), 0.3)
  batch = SequenceBatch(mask=jnp.ones((b, t)), old_logp=old_logp, rewards=rewards,
                        values=values, discounts=discounts)
  est = presets.ppo(eps, advantage="gae", gae_lambda=lam, whiten=False)

  def ours(logp):
    return est(logp, batch)[0]

  def theirs(logp):
    adv = jax.vmap(
        lambda r, d, v: rlax.truncated_generalized_advantage_estimation(r, d, lam, v))(
            rewards, discounts, values)
    rows = jax.vmap(lambda r, a: rlax.clipped_surrogate_pg_loss(r, a, eps))(
        jnp.exp(logp - old_logp), adv)
    return jnp.mean(rows)

  _assert_same(*_both_value_and_grad(ours, theirs, logp))


# ---------------------------------------------------------------------------------------------
# Entropy
# ---------------------------------------------------------------------------------------------


def test_categorical_entropy_matches_rlax():
  logits = _normal(30, (7, 9), 2.0)
  w = jnp.ones((7,), jnp.float32)

  @jax.jit
  def both(lg):
    h = likelihood.categorical_entropy(lg)
    # rlax.entropy_loss = -mean_t H_t w_t.
    return (h, -jnp.mean(h)), (rlax.softmax().entropy(lg), rlax.entropy_loss(lg, w))

  (h, loss), (h_rlax, loss_rlax) = both(logits)
  np.testing.assert_allclose(h, h_rlax, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(loss, loss_rlax, rtol=RTOL, atol=ATOL)


def test_entropy_bonus_in_ppo_estimator_matches_rlax():
  t, a = 10, 5
  logits = _normal(31, (1, t, a), 2.0)
  actions = _randint(32, (1, t), a)
  old_logp = likelihood.token_logp(logits, actions)
  # Zero advantages and ratio 1: the PPO term is 0, only the entropy bonus is left.
  batch = SequenceBatch(mask=jnp.ones((1, t)), old_logp=old_logp, advantages=jnp.zeros((1, t)))
  coef = 0.3
  est = presets.ppo(0.2, whiten=False, entropy_coef=coef)

  def ours(lg):
    return est(likelihood.token_logp(lg, actions), batch,
               entropy=likelihood.categorical_entropy(lg))[0]

  def theirs(lg):
    return coef * rlax.entropy_loss(lg[0], jnp.ones((t,)))

  out_ours, out_theirs = _both_value_and_grad(ours, theirs, logits)
  _assert_same(out_ours, out_theirs)
  assert float(out_ours[0]) < 0.0  # a bonus: the loss goes down as entropy goes up


def test_entropy_bonus_penalty_with_a_mask_matches_rlax_weights():
  t, a, coef = 6, 4, 0.1
  logits = _normal(33, (t, a))
  w = jnp.asarray([1, 0, 1, 1, 0, 1], jnp.float32)
  penalty = penalties.entropy_bonus(coef)

  @jax.jit
  def both(lg):
    term, _ = penalty(None, None, w[None], likelihood.categorical_entropy(lg)[None])
    # rlax: -mean_t H_t w_t over all T; the penalty is per token: sum it and divide by T.
    return jnp.sum(term) / t, coef * rlax.entropy_loss(lg, w)

  ours, theirs = both(logits)
  np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL)


def test_categorical_entropy_finite_with_minus_inf_logits():
  # Disallowed actions have logit -inf: [0, 0, -inf, -inf] is uniform over two actions (log 2),
  # [1, -inf, 1, 1] uniform over three (log 3), [5, -inf, -inf, -inf] deterministic (0).
  logits = jnp.asarray([[0.0, 0.0, -jnp.inf, -jnp.inf],
                        [1.0, -jnp.inf, 1.0, 1.0],
                        [5.0, -jnp.inf, -jnp.inf, -jnp.inf]], jnp.float32)

  @jax.jit
  def ent_and_grad(lg):
    return (likelihood.categorical_entropy(lg),
            jax.grad(lambda x: jnp.sum(likelihood.categorical_entropy(x)))(lg),
            rlax.softmax().entropy(jnp.ones((3,))))

  ent, grad, h3_rlax = ent_and_grad(logits)
  np.testing.assert_allclose(ent, [np.log(2.0), np.log(3.0), 0.0], rtol=1e-6, atol=1e-7)
  assert np.all(np.isfinite(np.asarray(grad)))
  # rlax on the same distribution without the disallowed action agrees.
  np.testing.assert_allclose(ent[1], h3_rlax, rtol=1e-6)
