"""Pairwise preference losses (DPO, cDPO, IPO, hinge) on hand-computed values.

The pair batch (B = 2, T = 3), with -inf log-probs under padding:

  chosen mask    [[1, 1, 0], [1, 0, 0]]      rejected mask  [[1, 1, 1], [1, 1, 0]]
  logp_chosen    [[-1, -2, pad], [-0.5, pad, pad]]      sums: [-3, -0.5]   token means: [-1.5, -0.5]
  ref_chosen     [[-1.5, -2.5, pad], [-1, pad, pad]]    sums: [-4, -1]     token means: [-2, -1]
  logp_rejected  [[-1, -1, -1], [-0.5, -0.5, pad]]      sums: [-3, -1]     token means: [-1, -0.5]
  ref_rejected   [[-1, -1, -0.5], [-1, -1.5, pad]]      sums: [-2.5, -2.5] token means: [-5/6, -1.25]

Summed log-ratios:       chosen [1, 0.5], rejected [-0.5, 1.5], h = [1.5, -1]
Length-normalised:       chosen [0.5, 0.5], rejected [-1/6, 0.75], h = [2/3, -0.25]
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgx_lab import PairBatch
from pgx_lab.estimators import preference
from pgx_lab.estimators.preference import pairwise

NEG_INF = -np.inf
H_SUM = (1.5, -1.0)
H_NORM = (2.0 / 3.0, -0.25)


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def _pair():
  chosen_mask = _f32([[1, 1, 0], [1, 0, 0]])
  rejected_mask = _f32([[1, 1, 1], [1, 1, 0]])
  logp_chosen = _f32([[-1.0, -2.0, NEG_INF], [-0.5, NEG_INF, NEG_INF]])
  logp_rejected = _f32([[-1.0, -1.0, -1.0], [-0.5, -0.5, NEG_INF]])
  batch = PairBatch(
      chosen_mask=chosen_mask,
      rejected_mask=rejected_mask,
      ref_chosen_logp=_f32([[-1.5, -2.5, NEG_INF], [-1.0, NEG_INF, NEG_INF]]),
      ref_rejected_logp=_f32([[-1.0, -1.0, -0.5], [-1.0, -1.5, NEG_INF]]),
  )
  return logp_chosen, logp_rejected, batch


def _softplus(x):
  return math.log1p(math.exp(x))


def _run(loss_fn):
  lc, lr, batch = _pair()

  @jax.jit
  def f(lc, lr):
    (loss, metrics), grads = jax.value_and_grad(
        lambda a, b: loss_fn(a, b, batch), argnums=(0, 1), has_aux=True)(lc, lr)
    return loss, metrics, grads

  return f(lc, lr)


def test_log_ratio_margin_by_hand():
  lc, lr, batch = _pair()
  h, chosen, rejected = pairwise.log_ratio_margin(lc, lr, batch)
  np.testing.assert_allclose(chosen, [1.0, 0.5], rtol=1e-6)
  np.testing.assert_allclose(rejected, [-0.5, 1.5], rtol=1e-6)
  np.testing.assert_allclose(h, H_SUM, rtol=1e-6)
  h, chosen, rejected = pairwise.log_ratio_margin(lc, lr, batch, length_normalize=True)
  np.testing.assert_allclose(chosen, [0.5, 0.5], rtol=1e-6)
  np.testing.assert_allclose(rejected, [-1.0 / 6.0, 0.75], rtol=1e-6)
  np.testing.assert_allclose(h, H_NORM, rtol=1e-6)


# Expected losses (mean over the two pairs), beta = 0.1 unless said:
#   DPO, summed: -log sigmoid(0.15) = log(1 + e^-0.15) = 0.62095705
#                -log sigmoid(-0.1) = log(1 + e^0.1)   = 0.74439666   mean 0.68267685
#   cDPO (s = 0.2): 0.8 * log(1 + e^-x) + 0.2 * log(1 + e^x) for x = beta h
#   IPO, summed (tau = beta = 0.1, 1/(2 tau) = 5): (1.5 - 5)^2 = 12.25, (-1 - 5)^2 = 36 -> 24.125
#   IPO, length-normalised: (2/3 - 5)^2 = 169/9 = 18.7778, (-0.25 - 5)^2 = 27.5625 -> 23.1701389
#   hinge (beta 0.1): max(0, 1 - 0.15) = 0.85, max(0, 1 + 0.1) = 1.1 -> 0.975
#   hinge (beta 1):   max(0, 1 - 1.5) = 0,    max(0, 1 + 1) = 2     -> 1.0
#   DPO, length-normalised (beta 1): log(1 + e^(-2/3)) = 0.41823, log(1 + e^0.25) = 0.82634
def _dpo(h, beta, s=0.0):
  return np.mean([(1 - s) * _softplus(-beta * x) + s * _softplus(beta * x) for x in h])


@pytest.mark.parametrize("loss_fn,expected", [
    (preference.dpo(beta=0.1), _dpo(H_SUM, 0.1)),
    (preference.dpo(beta=0.1, label_smoothing=0.2), _dpo(H_SUM, 0.1, 0.2)),
    (preference.dpo(beta=1.0, length_normalize=True), _dpo(H_NORM, 1.0)),
    (preference.ipo(beta=0.1), 24.125),
    (preference.ipo(beta=0.1, length_normalize=True), (169.0 / 9.0 + 27.5625) / 2),
    (preference.hinge(beta=0.1), 0.975),
    (preference.hinge(beta=1.0), 1.0),
    (preference.hinge(beta=1.0, length_normalize=True), (1 - 2 / 3 + 1.25) / 2),
], ids=["dpo", "cdpo", "dpo_norm", "ipo", "ipo_norm", "hinge", "hinge_beta1", "hinge_norm"])
def test_pairwise_losses_by_hand(loss_fn, expected):
  loss, _, grads = _run(loss_fn)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g)))


def test_dpo_value_spelled_out():
  # The parametrised table computes the DPO numbers with _dpo(); pin one by its literal value.
  loss, _, _ = _run(preference.dpo(beta=0.1))
  np.testing.assert_allclose(loss, (0.62095705 + 0.74439666) / 2, rtol=1e-6)


def test_metrics_by_hand():
  # beta = 0.1, h = [1.5, -1]: one pair of two is ranked right -> accuracy 0.5;
  # margin = mean(beta h) = 0.1 * 0.5 / 2 = 0.025;
  # reward_chosen = mean(beta * [1, 0.5]) = 0.075; reward_rejected = mean(beta * [-0.5, 1.5]) = 0.05
  _, metrics, _ = _run(preference.dpo(beta=0.1))
  np.testing.assert_allclose(metrics["reward_accuracy"], 0.5)
  np.testing.assert_allclose(metrics["margin"], 0.025, rtol=1e-5)
  np.testing.assert_allclose(metrics["reward_chosen"], 0.075, rtol=1e-5)
  np.testing.assert_allclose(metrics["reward_rejected"], 0.05, rtol=1e-5)
  # Metrics carry no gradient and are the same for every loss type.
  _, metrics_ipo, _ = _run(preference.ipo(beta=0.1))
  np.testing.assert_allclose(metrics_ipo["margin"], 0.025, rtol=1e-5)


def test_dpo_gradient_raises_chosen_and_lowers_rejected_by_hand():
  # d/dS_w of mean_i -log sigmoid(beta h_i) = -(beta / B) sigmoid(-beta h_i) on every valid chosen
  # token, and +(beta / B) sigmoid(-beta h_i) on every valid rejected token; 0 under padding.
  _, _, (g_chosen, g_rejected) = _run(preference.dpo(beta=0.1))
  lc, lr, batch = _pair()
  sig = np.array([1 / (1 + math.exp(0.1 * x)) for x in H_SUM])   # sigmoid(-beta h)
  coef = 0.1 / 2 * sig[:, None]
  np.testing.assert_allclose(g_chosen, -coef * np.asarray(batch.chosen_mask), rtol=1e-5)
  np.testing.assert_allclose(g_rejected, coef * np.asarray(batch.rejected_mask), rtol=1e-5)
  # Gradient descent (x - lr * g) raises the chosen and lowers the rejected log-probs.
  valid_c = np.asarray(batch.chosen_mask) > 0
  valid_r = np.asarray(batch.rejected_mask) > 0
  assert np.all(np.asarray(g_chosen)[valid_c] < 0) and np.all(np.asarray(g_rejected)[valid_r] > 0)
  assert np.all(np.asarray(g_chosen)[~valid_c] == 0) and np.all(
      np.asarray(g_rejected)[~valid_r] == 0)


def test_length_normalised_gradient_divides_by_the_length():
  # IPO, length-normalised, beta 0.1: loss = mean_i (h_i - 5)^2, h_i = chosen mean - rejected mean.
  # d/dlogp_chosen_{i,t} = (1/B) 2 (h_i - 5) / L_w,i:
  #   row0: 0.5 * 2 * (2/3 - 5) / 2 = -13/6;  row1: 0.5 * 2 * (-0.25 - 5) / 1 = -5.25
  _, _, (g_chosen, _) = _run(preference.ipo(beta=0.1, length_normalize=True))
  np.testing.assert_allclose(g_chosen, [[-13 / 6, -13 / 6, 0.0], [-5.25, 0.0, 0.0]], rtol=1e-5)


def test_minus_inf_log_probs_under_padding_give_finite_loss_and_gradient():
  for loss_fn in (preference.dpo(), preference.ipo(length_normalize=True), preference.hinge()):
    loss, metrics, grads = _run(loss_fn)
    assert np.isfinite(float(loss))
    assert all(np.isfinite(float(v)) for v in metrics.values())
    for g in grads:
      assert np.all(np.isfinite(np.asarray(g)))


def test_per_pair_returns_one_loss_per_pair():
  lc, lr, batch = _pair()
  per = preference.ipo(beta=0.1).per_pair(lc, lr, batch)
  np.testing.assert_allclose(per, [12.25, 36.0], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Errors name the argument
# ---------------------------------------------------------------------------------------------


def test_unknown_loss_type_raises_value_error():
  with pytest.raises(ValueError, match="loss_type"):
    pairwise.PairwiseLoss(loss_type="kto")


@pytest.mark.parametrize("kwargs,name", [
    (dict(beta=0.0), "beta"),
    (dict(beta=-1.0), "beta"),
    (dict(label_smoothing=0.5), "label_smoothing"),
    (dict(label_smoothing=-0.1), "label_smoothing"),
])
def test_bad_hyper_parameters_raise_value_error(kwargs, name):
  with pytest.raises(ValueError, match=name):
    preference.dpo(**kwargs)


def test_bad_shapes_raise_value_error_naming_the_argument():
  lc, lr, batch = _pair()
  loss = preference.dpo()
  with pytest.raises(ValueError, match="logp_chosen"):
    loss(lc[0], lr, batch)                                  # rank 1
  with pytest.raises(ValueError, match="batch.chosen_mask"):
    loss(lc, lr, batch.replace(chosen_mask=batch.chosen_mask[:, :2]))
  with pytest.raises(ValueError, match="batch.ref_rejected_logp"):
    loss(lc, lr, batch.replace(ref_rejected_logp=batch.ref_rejected_logp[:1]))
  # A rejected side with another number of rows (its own fields consistent with it).
  three = jnp.concatenate([lr, lr[:1]])
  with pytest.raises(ValueError, match="logp_rejected"):
    loss(lc, three, batch.replace(rejected_mask=jnp.ones((3, 3)),
                                  ref_rejected_logp=jnp.zeros((3, 3))))
  with pytest.raises(ValueError, match="logp_chosen"):
    loss(lc.astype(jnp.int32), lr, batch)                  # not a float dtype
