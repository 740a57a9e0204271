"""CoPG's contrastive loss: hand-computed values, its gradient is the contrastive PG, IPO, pi*.

The pair batch (B = 2, T = 3, -inf log-probs under padding), beta = 0.5:

  mask_a  [[1, 1, 0], [1, 0, 0]]   logp_a [[-1, -2, pad], [-0.5, pad, pad]]  ref [[-1.5, -2.5, pad], [-1, pad, pad]]
  mask_b  [[1, 1, 1], [1, 1, 0]]   logp_b [[-1, -1, -1], [-0.5, -0.5, pad]]  ref [[-1, -1, -0.5], [-1, -1.5, pad]]
  log-ratios: a [1, 0.5], b [-0.5, 1.5]   (token means: a [0.5, 0.5], b [-1/6, 0.75])
  rewards:    a [1, 0],   b [0, 1]
  R_beta = R - 0.5 * log-ratio:  a [0.5, -0.25],  b [0.25, 0.25];  residual a - b = [0.25, -0.5]
  per-pair loss residual^2 / (4 beta) = [0.03125, 0.125], mean 0.078125
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgx_lab import PairBatch
from pgx_lab.estimators.preference import contrastive
from pgx_lab.estimators.preference import pairwise

NEG_INF = -np.inf


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def _pair(reward_a=(1.0, 0.0), reward_b=(0.0, 1.0)):
  logp_a = _f32([[-1.0, -2.0, NEG_INF], [-0.5, NEG_INF, NEG_INF]])
  logp_b = _f32([[-1.0, -1.0, -1.0], [-0.5, -0.5, NEG_INF]])
  batch = contrastive.ContrastivePairBatch(
      mask_a=_f32([[1, 1, 0], [1, 0, 0]]),
      mask_b=_f32([[1, 1, 1], [1, 1, 0]]),
      ref_logp_a=_f32([[-1.5, -2.5, NEG_INF], [-1.0, NEG_INF, NEG_INF]]),
      ref_logp_b=_f32([[-1.0, -1.0, -0.5], [-1.0, -1.5, NEG_INF]]),
      reward_a=_f32(reward_a), reward_b=_f32(reward_b))
  return logp_a, logp_b, batch


def _run(loss_fn, logp_a, logp_b, batch):
  f = jax.jit(jax.value_and_grad(lambda a, b: loss_fn(a, b, batch), argnums=(0, 1), has_aux=True))
  (loss, metrics), grads = f(logp_a, logp_b)
  return loss, metrics, grads


def test_loss_and_metrics_by_hand():
  loss, metrics, _ = _run(contrastive.copg(beta=0.5), *_pair())
  np.testing.assert_allclose(loss, 0.078125, rtol=1e-6)
  np.testing.assert_allclose(metrics["reg_reward_a"], (0.5 - 0.25) / 2, rtol=1e-6)
  np.testing.assert_allclose(metrics["reg_reward_b"], 0.25, rtol=1e-6)
  np.testing.assert_allclose(metrics["log_ratio"], (1 + 0.5 - 0.5 + 1.5) / 4, rtol=1e-6)
  np.testing.assert_allclose(metrics["residual_rms"], np.sqrt((0.0625 + 0.25) / 2), rtol=1e-6)
  np.testing.assert_allclose(metrics["reward_gap"], 1.0, rtol=1e-6)


def test_length_normalised_loss_by_hand():
  # Token-mean log-ratios a [0.5, 0.5], b [-1/6, 0.75]; beta 0.5:
  # R_beta a = [1 - 0.25, 0 - 0.25] = [0.75, -0.25];  b = [0 + 1/12, 1 - 0.375] = [1/12, 0.625]
  # residual [2/3, -0.875] -> loss mean(residual^2) / 2 / 2
  loss, _, _ = _run(contrastive.copg(beta=0.5, length_normalize=True), *_pair())
  np.testing.assert_allclose(loss, ((2 / 3) ** 2 + 0.875 ** 2) / 4, rtol=1e-6)


def test_gradient_is_minus_the_contrastive_policy_gradient_by_hand():
  # g = (1/B) (1/2) (R_beta(a) - R_beta(b)) (+1 on a's tokens, -1 on b's), and grad loss = -g:
  #   d/dlogp_a = -(1/2)(1/2) [0.25, -0.5] m_a = [-0.0625, 0.125] m_a;  d/dlogp_b = -d/dlogp_a
  _, _, (ga, gb) = _run(contrastive.copg(beta=0.5), *_pair())
  _, _, batch = _pair()
  coef = np.array([-0.0625, 0.125])[:, None]
  np.testing.assert_allclose(ga, coef * np.asarray(batch.mask_a), rtol=1e-6)
  np.testing.assert_allclose(gb, -coef * np.asarray(batch.mask_b), rtol=1e-6)


def test_gradient_on_a_tabular_policy_equals_the_spec_g():
  # pi = softmax(theta) over K arms; responses are single arms. grad ln pi(y) = e_y - pi, so
  # g = (1/B) sum_i (1/2) (R_beta(a_i) - R_beta(b_i)) (e_{a_i} - e_{b_i}), computed in numpy.
  k, b, beta = 5, 7, 0.3
  rng = np.random.default_rng(0)
  theta = rng.normal(size=k).astype(np.float32)
  ref = np.log(rng.dirichlet(np.ones(k))).astype(np.float32)
  reward = rng.normal(size=k).astype(np.float32)
  arm_a, arm_b = rng.integers(0, k, b), rng.integers(0, k, b)
  ones = jnp.ones((b, 1))
  batch = contrastive.ContrastivePairBatch(ones, ones, _f32(ref[arm_a, None]),
                                           _f32(ref[arm_b, None]), _f32(reward[arm_a]),
                                           _f32(reward[arm_b]))

  def loss(th):
    logp = jax.nn.log_softmax(th)
    return contrastive.copg(beta)(logp[arm_a, None], logp[arm_b, None], batch)[0]

  grad = jax.grad(loss)(_f32(theta))
  logp = theta - np.log(np.sum(np.exp(theta)))
  r_beta = reward - beta * (logp - ref)
  g = np.zeros(k)
  for i in range(b):
    e = np.zeros(k)
    e[arm_a[i]] += 1.0
    e[arm_b[i]] -= 1.0
    g += 0.5 * (r_beta[arm_a[i]] - r_beta[arm_b[i]]) * e / b
  np.testing.assert_allclose(grad, -g, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("length_normalize", [False, True])
@pytest.mark.parametrize("c,beta", [(1.0, 0.1), (2.5, 0.4)])
def test_constant_reward_gap_is_ipo_times_beta_over_4(length_normalize, c, beta):
  # R(y_w) - R(y_l) = c on every pair: CoPG = (beta/4) (h - c/beta)^2 = (beta/4) IPO(tau) with
  # 1/(2 tau) = c/beta. Value and gradient, against pairwise.ipo on the same PairBatch.
  logp_w, logp_l, cb = _pair(reward_a=(c + 0.3, c - 2.0), reward_b=(0.3, -2.0))
  pb = PairBatch(chosen_mask=cb.mask_a, rejected_mask=cb.mask_b, ref_chosen_logp=cb.ref_logp_a,
                 ref_rejected_logp=cb.ref_logp_b)
  ipo = pairwise.ipo(beta=beta / (2 * c), length_normalize=length_normalize)
  loss_ipo, _, grads_ipo = _run(ipo, logp_w, logp_l, pb)
  loss, _, grads = _run(contrastive.copg(beta, length_normalize), logp_w, logp_l, cb)
  np.testing.assert_allclose(loss, beta / 4 * loss_ipo, rtol=1e-5)
  for g, g_ipo in zip(grads, grads_ipo):
    np.testing.assert_allclose(g, beta / 4 * np.asarray(g_ipo), rtol=1e-5, atol=1e-7)


def _expected_loss_minimiser(mu, ref_logp, reward, beta):
  """Minimises E_{y, y' ~ mu x mu} CoPG over softmax logits, exactly: the loss is a quadratic in
  theta (log Z cancels in the differences), so one Newton step with the pseudo-inverse Hessian
  from any start lands on the minimiser."""
  k = mu.shape[0]
  arm_a, arm_b = np.repeat(np.arange(k), k), np.tile(np.arange(k), k)
  weight = jnp.asarray(mu[arm_a] * mu[arm_b])          # float64 under enable_x64
  ones = jnp.ones((k * k, 1))
  batch = contrastive.ContrastivePairBatch(ones, ones, jnp.asarray(ref_logp[arm_a, None]),
                                           jnp.asarray(ref_logp[arm_b, None]),
                                           jnp.asarray(reward[arm_a]), jnp.asarray(reward[arm_b]))
  loss_fn = contrastive.copg(beta)

  def expected(theta):
    logp = jax.nn.log_softmax(theta)
    return jnp.sum(weight * loss_fn.per_pair(logp[arm_a, None], logp[arm_b, None], batch))

  theta0 = jnp.zeros(k, jnp.float64)
  hess = jax.hessian(expected)(theta0)
  theta = theta0 - jnp.linalg.pinv(hess) @ jax.grad(expected)(theta0)
  return np.asarray(jax.nn.softmax(theta)), expected


def test_optimum_on_a_bandit_is_the_tilted_reference_for_any_sampler():
  k, beta = 6, 0.25
  rng = np.random.default_rng(1)
  pi_ref = rng.dirichlet(np.ones(k))
  reward = rng.uniform(0, 1, k)
  pi_star = pi_ref * np.exp(reward / beta)
  pi_star /= pi_star.sum()
  with jax.enable_x64(True):
    for mu in (rng.dirichlet(0.5 * np.ones(k)), rng.dirichlet(3.0 * np.ones(k))):
      pi, expected = _expected_loss_minimiser(mu, np.log(pi_ref), reward, beta)
      np.testing.assert_allclose(pi, pi_star, rtol=1e-8)
      assert float(expected(jnp.log(jnp.asarray(pi_star)))) < 1e-20
      assert float(expected(jnp.log(jnp.asarray(pi_ref)))) > 1e-3


def test_padding_and_empty_rows_give_finite_values_and_gradients():
  logp_a, logp_b, batch = _pair()
  batch = batch.replace(mask_b=batch.mask_b.at[1].set(0.0))       # an all-masked response
  loss, metrics, grads = _run(contrastive.copg(0.5, length_normalize=True), logp_a, logp_b, batch)
  assert np.isfinite(float(loss)) and all(np.isfinite(float(v)) for v in metrics.values())
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g)))
  assert np.all(np.asarray(grads[1])[1] == 0)


def test_bad_input_raises_value_error_naming_the_argument():
  logp_a, logp_b, batch = _pair()
  with pytest.raises(ValueError, match="beta"):
    contrastive.copg(beta=0.0)
  loss = contrastive.copg()
  with pytest.raises(ValueError, match="logp_a"):
    loss(logp_a[0], logp_b, batch)
  with pytest.raises(ValueError, match="logp_b"):
    loss(logp_a, logp_b.astype(jnp.int32), batch)
  with pytest.raises(ValueError, match="batch.mask_b"):
    loss(logp_a, logp_b, batch.replace(mask_b=batch.mask_b[:, :2]))
  with pytest.raises(ValueError, match="batch.ref_logp_a"):
    loss(logp_a, logp_b, batch.replace(ref_logp_a=batch.ref_logp_a[:1]))
  with pytest.raises(ValueError, match="batch.reward_b"):
    loss(logp_a, logp_b, batch.replace(reward_b=jnp.zeros((3,))))
  with pytest.raises(ValueError, match="batch.reward_a"):
    loss(logp_a, logp_b, batch.replace(reward_a=jnp.zeros((2, 1))))
  three = jnp.concatenate([logp_b, logp_b[:1]])
  with pytest.raises(ValueError, match="logp_b"):
    loss(logp_a, three, batch.replace(mask_b=jnp.ones((3, 3)), ref_logp_b=jnp.zeros((3, 3))))
