"""Tiny examples computed by hand: the expected numbers come from the arithmetic in the comments,
never from the library. They pin the conventions where libraries differ (spec section 0): the GRPO
normalisers, biased std + 1e-6, eps_low != eps_high, dual clip, ratio cap, CISPO's cap, GSPO's
length-normalised sequence ratio, the KL estimators, and the aggregations on an all-masked row.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgx_lab import SequenceBatch
from pgx_lab.estimators import advantage_parts
from pgx_lab.estimators import advantages
from pgx_lab.estimators import aggregation
from pgx_lab.estimators import penalties
from pgx_lab.estimators import presets
from pgx_lab.estimators import reference

NEG_INF = -jnp.inf


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def _loss_grad(est, logp, batch):
  """((loss, metrics), dloss/dlogp) of an estimator, jitted (one compilation per call)."""
  return jax.jit(jax.value_and_grad(lambda lp: est(lp, batch), has_aux=True))(logp)


# ---------------------------------------------------------------------------------------------
# GRPO: advantages and the four loss types' normalisers
# ---------------------------------------------------------------------------------------------
#
# B = 4 responses, T = 5, lengths L = [1, 2, 3, 4]; groups: rows {0, 3} (prompt 0), {1, 2} (prompt 1).
# rewards [1, 2, 0, 0]:
#   prompt 0: rewards [1, 0]: mean 0.5, biased std 0.5 -> A0 = 0.5 / (0.5 + 1e-6) =: a, A3 = -a
#   prompt 1: rewards [2, 0]: mean 1,   biased std 1   -> A1 = 1 / (1 + 1e-6) =: a2,  A2 = -a2
#   a = 0.999998000004, a2 = 0.999999000001
# Dr.GRPO (scale none): A = R - group mean = [0.5, 1, -1, -0.5].
A = 0.5 / (0.5 + 1e-6)
A2 = 1.0 / (1.0 + 1e-6)
LENGTHS = (1, 2, 3, 4)


def _grpo_batch(ratio_overrides=(), loss_normalizer=None):
  t = 5
  mask = np.zeros((4, t), np.float32)
  for i, n in enumerate(LENGTHS):
    mask[i, :n] = 1.0
  logp = np.where(mask > 0, -0.7, -np.inf).astype(np.float32)   # -inf under padding
  old_logp = logp.copy()                                          # ratio 1 everywhere...
  for (i, j), r in ratio_overrides:                               # ...except these tokens
    old_logp[i, j] = logp[i, j] - math.log(r)
  batch = SequenceBatch(mask=_f32(mask), old_logp=_f32(old_logp), rewards=_f32([1, 2, 0, 0]),
                        group_ids=jnp.asarray([0, 1, 1, 0], jnp.int32),
                        loss_normalizer=None if loss_normalizer is None else _f32(loss_normalizer))
  return _f32(logp), batch


def test_grpo_advantages_are_group_normalised_with_biased_std_plus_1e6():
  _, batch = _grpo_batch()
  adv = advantage_parts.group_normalized()(batch)
  np.testing.assert_allclose(adv, [A, A2, -A2, -A], rtol=3e-7)
  # Not 1 exactly: the 1e-6 is added to the std (0.5 + 1e-6), not inside the square root.
  assert float(adv[0]) < 1.0 - 1e-6
  # Dr.GRPO's unscaled advantage.
  adv_none = advantage_parts.group_normalized(scale="none")(batch)
  np.testing.assert_allclose(adv_none, [0.5, 1.0, -1.0, -0.5], rtol=1e-7)


# Ratio 1 everywhere: each token's loss is -A_i (min(1 * A, clip(1) * A) = A).
#   token sum:  -a*1 - a2*2 + a2*3 + a*4 = 3a + a2 = 3.999993
#   grpo    (seq-mean-token-mean): mean_i(-A_i) = (-a - a2 + a2 + a) / 4 = 0
#   bnpo    (token mean):          (3a + a2) / 10 tokens = 0.3999993
#   dr_grpo (sum / (B * T)), A = [0.5, 1, -1, -0.5]:
#           -0.5*1 - 1*2 + 1*3 + 0.5*4 = 2.5; 2.5 / (4 * 5) = 0.125
#   dapo    sum / batch.loss_normalizer = (3a + a2) / 16 = 0.2499996; without it / 10 tokens.
RATIO_ONE_EXPECTED = {
    "grpo": 0.0,
    "bnpo": (3 * A + A2) / 10,
    "dr_grpo": 0.125,
    "dapo": (3 * A + A2) / 16,
}

# Ratio 0.5 at token (0, 0) (A0 = a > 0, not clipped from below: -min(0.5a, 0.8a) = -0.5a) and
# ratio 1.1 at token (3, 0) (A3 = -a, inside the clip: -min(-1.1a, -1.1a) = 1.1a):
#   row losses: row0 [-0.5a], row1 [-a2, -a2], row2 [a2, a2, a2], row3 [1.1a, a, a, a]
#   grpo:    (-0.5a - a2 + a2 + (1.1a + 3a)/4) / 4 = (-0.5a + 1.025a) / 4 = 0.13125a
#   bnpo:    (-0.5a - 2a2 + 3a2 + 4.1a) / 10 = (3.6a + a2) / 10
#   dr_grpo: A = [0.5, 1, -1, -0.5]: -0.25 - 2 + 3 + (0.55 + 1.5) = 2.8; 2.8 / 20 = 0.14
#   dapo:    (3.6a + a2) / 16
RATIO_MIXED_EXPECTED = {
    "grpo": 0.13125 * A,
    "bnpo": (3.6 * A + A2) / 10,
    "dr_grpo": 0.14,
    "dapo": (3.6 * A + A2) / 16,
}


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("case", ["ratio_one", "ratio_mixed"])
def test_grpo_loss_types_normalisers_by_hand(loss_type, case):
  overrides = () if case == "ratio_one" else (((0, 0), 0.5), ((3, 0), 1.1))
  expected = (RATIO_ONE_EXPECTED if case == "ratio_one" else RATIO_MIXED_EXPECTED)[loss_type]
  normalizer = 16.0 if loss_type == "dapo" else None
  logp, batch = _grpo_batch(overrides, normalizer)
  (loss, metrics), grad = _loss_grad(presets.grpo(loss_type), logp, batch)
  np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
  assert np.all(np.isfinite(np.asarray(grad)))
  assert np.all(np.asarray(grad)[np.asarray(batch.mask) == 0] == 0.0)
  assert float(metrics["clip_fraction"]) == 0.0


def test_grpo_ratio_one_gradient_by_hand():
  # With ratio 1 the gradient w.r.t. logp_t is -A_i / normaliser (REINFORCE's):
  #   grpo:  -A_i / (L_i * B): row0 -a/4, row1 -a2/8, row2 a2/12, row3 a/16
  #   bnpo:  -A_i / 10
  logp, batch = _grpo_batch()
  m = np.asarray(batch.mask)
  (_, _), g = _loss_grad(presets.grpo("grpo"), logp, batch)
  expected = np.array([-A / 4, -A2 / 8, A2 / 12, A / 16])[:, None] * m
  np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-8)
  (_, _), g = _loss_grad(presets.grpo("bnpo"), logp, batch)
  expected = np.array([-A, -A2, A2, A])[:, None] * m / 10
  np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-8)


def test_dapo_without_normalizer_uses_the_local_token_count():
  logp, batch = _grpo_batch()
  (loss, _), _ = _loss_grad(presets.grpo("dapo"), logp, batch)
  np.testing.assert_allclose(loss, (3 * A + A2) / 10, rtol=1e-5)   # 10 response tokens


def test_dr_grpo_with_group_scale_keeps_the_token_sum_normaliser():
  # scale="group" overrides Dr.GRPO's "none": A = [a, a2, -a2, -a]; (3a + a2) / 20.
  logp, batch = _grpo_batch()
  (loss, _), _ = _loss_grad(presets.grpo("dr_grpo", scale="group"), logp, batch)
  np.testing.assert_allclose(loss, (3 * A + A2) / 20, rtol=1e-5)


def test_grpo_all_masked_row_stays_out_of_the_group_statistics():
  # Rows 0, 1 (lengths 2, 1) and an all-masked row 2 (a padding row) share prompt 0;
  # rewards [1, 0, 5]. Row 2 is left out of the group: mean 0.5, std 0.5 -> A = [a, -a, 0]
  # (with row 2 in, the mean would be 2 and no advantage would be +-a).
  # bnpo, ratio 1: (-a * 2 + a * 1) / 3 tokens = -a / 3.
  # grpo (seq-mean-token-mean): (-a + a + 0) / 3 = 0: the empty row counts in B (as in TRL).
  mask = _f32([[1, 1], [1, 0], [0, 0]])
  logp = jnp.where(mask > 0, -0.3, NEG_INF)
  batch = SequenceBatch(mask=mask, old_logp=logp, rewards=_f32([1, 0, 5]),
                        group_ids=jnp.asarray([0, 0, 0], jnp.int32))
  np.testing.assert_allclose(advantage_parts.group_normalized()(batch), [A, -A, 0.0], rtol=3e-7)
  (loss, metrics), grad = _loss_grad(presets.grpo("bnpo"), logp, batch)
  np.testing.assert_allclose(loss, -A / 3, rtol=1e-5)
  np.testing.assert_allclose(grad, [[-A / 3, -A / 3], [A / 3, 0.0], [0.0, 0.0]], rtol=1e-5)
  # Sequence-advantage metrics are over the non-empty rows [a, -a]: mean 0, std a, max a, min -a.
  np.testing.assert_allclose(metrics["advantage_mean"], 0.0, atol=1e-7)
  np.testing.assert_allclose(metrics["advantage_std"], A, rtol=1e-5)
  np.testing.assert_allclose(metrics["advantage_max"], A, rtol=1e-6)
  np.testing.assert_allclose(metrics["advantage_min"], -A, rtol=1e-6)


def test_grpo_with_k3_kl_penalty_by_hand():
  # Ratio 1 and ref_logp = logp - 1 on every response token: d = ref - logp = -1,
  # k3 = e^-1 - (-1) - 1 = e^-1 = 0.36787944 on every token, so with beta = 0.04 the bnpo loss is
  # (3a + a2) / 10 + 0.04 * e^-1 = 0.3999993 + 0.01471518 = 0.41471448.
  # d/dlogp of beta * k3 = beta * (1 - e^d) = 0.04 * (1 - e^-1) = 0.02528482 per token, / 10.
  logp, batch = _grpo_batch()
  batch = batch.replace(ref_logp=jnp.where(batch.mask > 0, logp - 1.0, NEG_INF))
  (loss, metrics), grad = _loss_grad(presets.grpo("bnpo", kl_beta=0.04), logp, batch)
  np.testing.assert_allclose(loss, (3 * A + A2) / 10 + 0.04 * math.exp(-1.0), rtol=1e-5)
  np.testing.assert_allclose(metrics["kl_ref_k3"], math.exp(-1.0), rtol=1e-5)
  m = np.asarray(batch.mask)
  expected = (np.array([-A, -A2, A2, A])[:, None] + 0.04 * (1 - math.exp(-1.0))) * m / 10
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# GSPO
# ---------------------------------------------------------------------------------------------
#
# B = 2 (one group), T = 3, mask [[1, 1, 0], [1, 1, 1]], rewards [1, 0] -> A = [a, -a].
# token log-ratios: row0 [0.1, 0.3, pad] -> mean 0.2  -> s0 = e^0.2   = 1.2214028
#                   row1 [-0.1, 0.0, 0.04] -> mean -0.02 -> s1 = e^-0.02 = 0.9801987
# eps_low = 0.1, eps_high = 0.15: s0 > 1.15 with A > 0 -> clipped: loss0 = -1.15 a (no gradient)
#                                 s1 in [0.9, 1.15]              loss1 = -s1 * (-a) = s1 a
# loss = (loss0 + loss1) / 2 = (-1.15 + 0.9801987) a / 2 = -0.08490066 a
# d loss / d logp_{1,t} = (1/2) * a * s1 * (1/3)  (d s1 / d logp_t = s1 / L_1) = 0.16336645 a
S0, S1 = math.exp(0.2), math.exp(-0.02)


def _gspo_batch():
  mask = _f32([[1, 1, 0], [1, 1, 1]])
  old_logp = _f32([[-1.0, -2.0, NEG_INF], [-0.5, -1.5, -2.5]])
  log_ratio = _f32([[0.1, 0.3, 0.0], [-0.1, 0.0, 0.04]])
  logp = jnp.where(mask > 0, old_logp + log_ratio, NEG_INF)
  batch = SequenceBatch(mask=mask, old_logp=old_logp, rewards=_f32([1.0, 0.0]),
                        group_ids=jnp.asarray([0, 0], jnp.int32))
  return logp, batch


def test_sequence_log_ratio_is_the_mean_token_log_ratio():
  logp, batch = _gspo_batch()
  np.testing.assert_allclose(reference.sequence_log_ratio(logp, batch.old_logp, batch.mask),
                             [0.2, -0.02], rtol=1e-5, atol=1e-7)


def test_gspo_token_ratio_value_equals_sequence_ratio_and_gradient_is_per_token():
  logp, batch = _gspo_batch()
  mask = batch.mask

  @jax.jit
  def value_and_grad(lp):
    f = lambda x: reference.gspo_token_ratio(x, batch.old_logp, mask)
    return f(lp), jax.grad(lambda x: jnp.sum(f(x) * mask))(lp)

  ratio, grad = value_and_grad(logp)
  expected = np.array([[S0, S0, S0], [S1, S1, S1]])
  m = np.asarray(mask) > 0
  np.testing.assert_allclose(np.asarray(ratio)[m], expected[m], rtol=1e-5)
  # d/dlogp_t of sg(s_i) pi_t / sg(pi_t) is s_i at each valid token, 0 under padding.
  np.testing.assert_allclose(grad, expected * np.asarray(mask), rtol=1e-5)


@pytest.mark.parametrize("preset", [presets.gspo, presets.gspo_token])
def test_gspo_loss_with_one_clipped_sequence_by_hand(preset):
  logp, batch = _gspo_batch()
  (loss, metrics), grad = _loss_grad(preset(eps_low=0.1, eps_high=0.15), logp, batch)
  np.testing.assert_allclose(loss, (-1.15 + S1) * A / 2, rtol=1e-5)
  expected_grad = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]) * A * S1 / 6
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-8)
  if preset is presets.gspo:
    # One of the two sequences is clipped; ratio_mean over sequences = (s0 + s1) / 2.
    np.testing.assert_allclose(metrics["clip_fraction"], 0.5)
    np.testing.assert_allclose(metrics["ratio_mean"], (S0 + S1) / 2, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# The clipped surrogate: eps_low != eps_high, dual clip, ratio cap; clip fraction
# ---------------------------------------------------------------------------------------------


def _surrogate_and_grad(ratio, adv, **kw):
  f = lambda r: reference.clipped_surrogate_loss(r, _f32(adv), **kw)
  r = _f32(ratio)
  # Each element's loss depends only on its own ratio: grad of the sum = elementwise d loss / d r.
  return jax.jit(lambda r: (f(r), jax.grad(lambda x: jnp.sum(f(x)))(r)))(r)


def test_clipped_surrogate_decoupled_eps_by_hand():
  # eps_low = 0.2, eps_high = 0.28: clip(r) in [0.8, 1.28]; loss = -min(r A, clip(r) A).
  #  r     A    r A    clip(r) A   loss    d loss/d r   clip removes the gradient?
  #  1.5   1    1.5    1.28       -1.28    0            yes (r > 1.28, A > 0)
  #  1.5  -1   -1.5   -1.28        1.5     1            no
  #  0.5   1    0.5    0.8        -0.5    -1            no
  #  0.5  -1   -0.5   -0.8         0.8     0            yes (r < 0.8, A < 0)
  #  1.25  1    1.25   1.25       -1.25   -1            no (it would be with eps_high = 0.2)
  #  0.9   2    1.8    1.8        -1.8    -2            no
  ratio = [1.5, 1.5, 0.5, 0.5, 1.25, 0.9]
  adv = [1.0, -1.0, 1.0, -1.0, 1.0, 2.0]
  loss, grad = _surrogate_and_grad(ratio, adv, eps_low=0.2, eps_high=0.28)
  np.testing.assert_allclose(loss, [-1.28, 1.5, -0.5, 0.8, -1.25, -1.8], rtol=1e-6)
  np.testing.assert_allclose(grad, [0.0, 1.0, -1.0, 0.0, -1.0, -2.0], rtol=1e-6)
  frac = reference.clip_fraction(_f32(ratio), _f32(adv), 0.2, 0.28)
  np.testing.assert_array_equal(frac, [1, 0, 0, 1, 0, 0])
  # Symmetric eps 0.2: r = 1.25 with A = 1 is now clipped at 1.2.
  loss_sym, _ = _surrogate_and_grad([1.25], [1.0], eps_low=0.2)
  np.testing.assert_allclose(loss_sym, [-1.2], rtol=1e-6)
  np.testing.assert_array_equal(reference.clip_fraction(_f32([1.25]), _f32([1.0]), 0.2, None), [1])


def test_clipped_surrogate_dual_clip_by_hand():
  # eps = 0.2, c = 3: for A < 0 the loss is min(PPO loss, -c A).
  #  r    A     PPO loss                  dual-clipped   d/dr
  #  5   -1     -min(-5, -1.2) = 5        min(5, 3) = 3     0
  #  2   -1     2                         min(2, 3) = 2     1
  #  5    1     -min(5, 1.2) = -1.2       (A > 0) -1.2      0
  #  5   -0.5   2.5                       min(2.5, 1.5) = 1.5  0
  #  0.5 -1     -min(-0.5, -0.8) = 0.8    0.8               0
  ratio = [5.0, 2.0, 5.0, 5.0, 0.5]
  adv = [-1.0, -1.0, 1.0, -0.5, -1.0]
  loss, grad = _surrogate_and_grad(ratio, adv, eps_low=0.2, dual_clip=3.0)
  np.testing.assert_allclose(loss, [3.0, 2.0, -1.2, 1.5, 0.8], rtol=1e-6)
  np.testing.assert_allclose(grad, [0.0, 1.0, 0.0, 0.0, 0.0], atol=1e-7)
  # Without the dual clip the first row would be 5 with gradient 1.
  loss_plain, grad_plain = _surrogate_and_grad([5.0], [-1.0], eps_low=0.2)
  np.testing.assert_allclose(loss_plain, [5.0])
  np.testing.assert_allclose(grad_plain, [1.0])


def test_clipped_surrogate_ratio_cap_by_hand():
  # eps = 0.2, cap delta = 4: the unclipped ratio is min(r, 4).
  #  r    A    loss = max(-min(r, 4) A, -clip(r) A)         d/dr
  #  10  -1    max(4, 1.2) = 4                                0 (capped)
  #  10   1    max(-4, -1.2) = -1.2                           0
  #  2   -1    max(2, 1.2) = 2                                1
  #  3   -2    max(6, 2.4) = 6                                2
  loss, grad = _surrogate_and_grad([10.0, 10.0, 2.0, 3.0], [-1.0, 1.0, -1.0, -2.0], eps_low=0.2,
                                   ratio_cap=4.0)
  np.testing.assert_allclose(loss, [4.0, -1.2, 2.0, 6.0], rtol=1e-6)
  np.testing.assert_allclose(grad, [0.0, 0.0, 1.0, 2.0], atol=1e-7)


def test_token_clip_metrics_in_the_estimator():
  # One row, 4 tokens, eps 0.2/0.28; ratios [1.5, 0.5, 1.25, 0.5], A = [1, -1, 1, 1]:
  #   token 0: 1.5 > 1.28, A > 0: clipped, loss -1.28
  #   token 1: 0.5 < 0.8,  A < 0: clipped, loss -min(-0.5, -0.8) = 0.8
  #   token 2: 1.25 <= 1.28:       not clipped (it would be with eps_high = 0.2), loss -1.25
  #   token 3: 0.5 with A > 0:     not clipped, loss -min(0.5, 0.8) = -0.5
  # loss = (-1.28 + 0.8 - 1.25 - 0.5) / 4 = -2.23 / 4 = -0.5575; clip_fraction 2/4 = 0.5;
  # ratio_mean = (1.5 + 0.5 + 1.25 + 0.5) / 4 = 0.9375, ratio_max = 1.5.
  ratio = np.array([1.5, 0.5, 1.25, 0.5])
  logp = _f32([[-1.0, -1.0, -1.0, -1.0]])
  batch = SequenceBatch(mask=jnp.ones((1, 4)), old_logp=logp - jnp.log(_f32(ratio)),
                        advantages=_f32([[1.0, -1.0, 1.0, 1.0]]))
  est = presets.grpo("bnpo", eps_high=0.28).replace(advantage=advantage_parts.precomputed())
  (loss, metrics), grad = _loss_grad(est, logp, batch)
  np.testing.assert_allclose(loss, -0.5575, rtol=1e-5)
  np.testing.assert_allclose(metrics["clip_fraction"], 0.5)
  np.testing.assert_allclose(metrics["ratio_mean"], 0.9375, rtol=1e-5)
  np.testing.assert_allclose(metrics["ratio_max"], 1.5, rtol=1e-5)
  # d loss / d logp_t = (d loss / d r) r / 4: [0, 0, -1.25 / 4, -0.5 / 4]
  np.testing.assert_allclose(grad, [[0.0, 0.0, -0.3125, -0.125]], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# CISPO vs PPO on clipped tokens
# ---------------------------------------------------------------------------------------------
#
# One row, T = 5, mask [1, 1, 1, 1, 0], logp = -1 on the response, ratios [3, 1.5, 0.5, 1.0],
# A = [1, 1, -1, 1].
# CISPO (ratio_max = 2): w = sg(clip(r, 0, 2)) = [2, 1.5, 0.5, 1]; loss_t = -w A logp
#   = [2, 1.5, -0.5, 1]; token mean = 4 / 4 = 1.0; d/dlogp_t = -w A / 4 = [-0.5, -0.375, 0.125, -0.25]
#   (the capped token 0 keeps a gradient). clip fraction (r > 2): 1 / 4.
# PPO (eps 0.2): losses [-1.2, -1.2, 0.8, -1.0] -> mean -0.65; d/dlogp = [0, 0, 0, -0.25]:
#   the clipped tokens 0, 1, 2 have no gradient.


def _cispo_batch():
  ratio = np.array([3.0, 1.5, 0.5, 1.0, 1.0])
  mask = _f32([[1, 1, 1, 1, 0]])
  logp = jnp.where(mask > 0, -1.0, NEG_INF)
  old_logp = jnp.where(mask > 0, logp - jnp.log(_f32(ratio)), NEG_INF)
  batch = SequenceBatch(mask=mask, old_logp=old_logp, advantages=_f32([[1, 1, -1, 1, 0]]))
  return logp, batch


def test_cispo_caps_the_weight_and_keeps_the_gradient_of_clipped_tokens():
  logp, batch = _cispo_batch()
  est = presets.cispo(ratio_max=2.0).replace(advantage=advantage_parts.precomputed())
  (loss, metrics), grad = _loss_grad(est, logp, batch)
  np.testing.assert_allclose(loss, 1.0, rtol=1e-5)
  np.testing.assert_allclose(grad, [[-0.5, -0.375, 0.125, -0.25, 0.0]], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(metrics["clip_fraction"], 0.25)


def test_ppo_clipped_tokens_have_zero_gradient():
  logp, batch = _cispo_batch()
  (loss, _), grad = _loss_grad(presets.ppo(0.2, whiten=False), logp, batch)
  np.testing.assert_allclose(loss, -0.65, rtol=1e-5)
  np.testing.assert_allclose(grad, [[0.0, 0.0, 0.0, -0.25, 0.0]], rtol=1e-5, atol=1e-7)


def test_cispo_weight_by_hand():
  # clip([3, 1.5, 0.5, 1], 0.7, 2) = [2, 1.5, 0.7, 1]; the weight carries no gradient.
  r = _f32([3.0, 1.5, 0.5, 1.0])
  np.testing.assert_allclose(reference.cispo_weight(r, 2.0, 0.7), [2.0, 1.5, 0.7, 1.0])
  np.testing.assert_allclose(reference.cispo_weight(r, 2.0), [2.0, 1.5, 0.5, 1.0])
  g = jax.grad(lambda x: jnp.sum(reference.cispo_weight(x, 2.0)))(r)
  np.testing.assert_array_equal(g, [0.0, 0.0, 0.0, 0.0])


# ---------------------------------------------------------------------------------------------
# KL estimators
# ---------------------------------------------------------------------------------------------
#
# logp = [-1, -2, -inf], ref = [-2, -1, -inf], mask [1, 1, 0]; d = ref - logp = [-1, 1, (masked)]
# (-inf - -inf would be NaN: the padding must be masked before the subtraction).
#   k1 = -d           = [1, -1, 0]
#   k2 = d^2 / 2      = [0.5, 0.5, 0]
#   k3 = e^d - d - 1  = [e^-1 + 1 - 1, e - 1 - 1, 0] = [0.36787944, 0.71828183, 0]
#   d k3 / d logp = 1 - e^d = [1 - e^-1, 1 - e, 0] = [0.63212056, -1.71828183, 0]


@pytest.mark.parametrize("estimator,expected", [
    ("k1", [1.0, -1.0, 0.0]),
    ("k2", [0.5, 0.5, 0.0]),
    ("k3", [math.exp(-1.0), math.e - 2.0, 0.0]),
])
def test_kl_estimators_by_hand(estimator, expected):
  logp = _f32([[-1.0, -2.0, NEG_INF]])
  ref = _f32([[-2.0, -1.0, NEG_INF]])
  mask = _f32([[1, 1, 0]])
  np.testing.assert_allclose(penalties.kl_estimate(logp, ref, mask, estimator), [expected],
                             rtol=1e-6, atol=1e-7)


def test_k3_gradient_and_penalty_metric_by_hand():
  logp = _f32([[-1.0, -2.0, NEG_INF]])
  ref = _f32([[-2.0, -1.0, NEG_INF]])
  mask = _f32([[1, 1, 0]])
  g = jax.grad(lambda lp: jnp.sum(penalties.kl_estimate(lp, ref, mask, "k3")))(logp)
  np.testing.assert_allclose(g, [[1 - math.exp(-1.0), 1 - math.e, 0.0]], rtol=1e-6)
  batch = SequenceBatch(mask=mask, ref_logp=ref)
  term, metrics = penalties.kl_penalty(0.1, "k3")(logp, batch, mask, None)
  np.testing.assert_allclose(term, [[0.1 * math.exp(-1.0), 0.1 * (math.e - 2.0), 0.0]], rtol=1e-6)
  # kl_ref_k3 = mean over the 2 valid tokens = (0.36787944 + 0.71828183) / 2 = 0.54308064
  np.testing.assert_allclose(metrics["kl_ref_k3"], (math.exp(-1.0) + math.e - 2.0) / 2, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Advantages
# ---------------------------------------------------------------------------------------------


def test_leave_one_out_by_hand():
  # groups (ids need not be contiguous): id 3 -> rows 0..2 rewards [1, 2, 3];
  # id 0 -> rows 3, 4 rewards [5, 7]; id 1 -> row 5 alone, reward 4.
  #   row0: 1 - (2 + 3)/2 = -1.5; row1: 2 - (1 + 3)/2 = 0; row2: 3 - (1 + 2)/2 = 1.5
  #   row3: 5 - 7 = -2;           row4: 7 - 5 = 2
  #   row5: a group of one has no baseline: 4 - 0 = 4
  rewards = _f32([1, 2, 3, 5, 7, 4])
  ids = jnp.asarray([3, 3, 3, 0, 0, 1], jnp.int32)
  np.testing.assert_allclose(advantages.leave_one_out(rewards, ids),
                             [-1.5, 0.0, 1.5, -2.0, 2.0, 4.0], rtol=1e-6)
  # An invalid row leaves its group: row2 out -> row0: 1 - 2 = -1, row1: 2 - 1 = 1, row2: 0.
  valid = _f32([1, 1, 0, 1, 1, 1])
  np.testing.assert_allclose(advantages.leave_one_out(rewards, ids, valid),
                             [-1.0, 1.0, 0.0, -2.0, 2.0, 4.0], rtol=1e-6)


# rewards [1, 2, 3 | 5, 7], groups [0, 0, 0, 1, 1]; centred: [-1, 0, 1, -1, 1]
#   group, biased:   g0 var (1 + 0 + 1)/3 = 2/3, std 0.81649658; g1 var 1, std 1
#   group, unbiased: g0 var 2/2 = 1, std 1;      g1 var 2/1 = 2, std 1.41421356
#   batch (keeps the group mean): batch mean 3.6,
#     var = (2.6^2 + 1.6^2 + 0.6^2 + 1.4^2 + 3.4^2) / 5 = 23.2 / 5 = 4.64, std 2.15406592
#   none: centred.
#   eps_in_sqrt with eps = 1: g0 sqrt(2/3 + 1) = 1.29099445, g1 sqrt(2) = 1.41421356
#   eps = 1 added to the std: g0 1.81649658, g1 2
SQ23 = math.sqrt(2.0 / 3.0)


@pytest.mark.parametrize("kwargs,expected", [
    (dict(scale="group"), [-1 / (SQ23 + 1e-6), 0, 1 / (SQ23 + 1e-6), -1 / (1 + 1e-6),
                           1 / (1 + 1e-6)]),
    (dict(scale="group", unbiased_std=True),
     [-1 / (1 + 1e-6), 0, 1 / (1 + 1e-6), -1 / (math.sqrt(2) + 1e-6), 1 / (math.sqrt(2) + 1e-6)]),
    (dict(scale="batch"), [x / (math.sqrt(4.64) + 1e-6) for x in (-1, 0, 1, -1, 1)]),
    (dict(scale="none"), [-1, 0, 1, -1, 1]),
    (dict(scale="group", eps=1.0, eps_in_sqrt=True),
     [-1 / math.sqrt(5 / 3), 0, 1 / math.sqrt(5 / 3), -1 / math.sqrt(2), 1 / math.sqrt(2)]),
    (dict(scale="group", eps=1.0), [-1 / (SQ23 + 1), 0, 1 / (SQ23 + 1), -0.5, 0.5]),
])
def test_group_normalized_by_hand(kwargs, expected):
  rewards = _f32([1, 2, 3, 5, 7])
  ids = jnp.asarray([0, 0, 0, 1, 1], jnp.int32)
  np.testing.assert_allclose(advantages.group_normalized(rewards, ids, **kwargs), expected,
                             rtol=1e-6, atol=1e-7)


def test_group_normalized_constant_group_and_invalid_rows():
  # A constant group gives 0 (0 / (0 + eps)), never NaN.
  out = advantages.group_normalized(_f32([2, 2, 1, 3]), jnp.asarray([0, 0, 1, 1], jnp.int32))
  np.testing.assert_allclose(out, [0, 0, -1 / (1 + 1e-6), 1 / (1 + 1e-6)], rtol=1e-6)
  # Invalid row 2 (reward 100) is left out: group 0 = rewards [1, 2], mean 1.5, std 0.5.
  out = advantages.group_normalized(_f32([1, 2, 100, 5, 7]), jnp.asarray([0, 0, 0, 1, 1],
                                                                        jnp.int32),
                                    valid=_f32([1, 1, 0, 1, 1]))
  np.testing.assert_allclose(out, [-0.5 / 0.500001, 0.5 / 0.500001, 0.0, -1 / 1.000001,
                                   1 / 1.000001], rtol=1e-6)


def test_whiten_by_hand():
  # x = [1, 2, 3, 6] (and a masked 100): mean 3, var (4 + 1 + 0 + 9) / 4 = 3.5, std 1.87082869
  #   whitened: [-2, -1, 0, 3] / 1.87082869 = [-1.06904497, -0.53452248, 0, 1.60356745]
  #   shift_mean=False: [1, 2, 3, 6] / 1.87082869 (the variance is still about the mean)
  x = _f32([1, 2, 3, 6, 100])
  m = _f32([1, 1, 1, 1, 0])
  s = math.sqrt(3.5)
  np.testing.assert_allclose(advantages.whiten(x, m), [-2 / s, -1 / s, 0, 3 / s, 0], rtol=1e-6,
                             atol=1e-7)
  np.testing.assert_allclose(advantages.whiten(x, m, shift_mean=False),
                             [1 / s, 2 / s, 3 / s, 6 / s, 0], rtol=1e-6)
  # Constant input: 0, not NaN (eps inside the square root).
  np.testing.assert_allclose(advantages.whiten(_f32([4, 4, 4])), [0, 0, 0])


def test_discounted_return_by_hand():
  # gamma 0.5: row0 1 + 0.5*2 + 0.25*3 = 2.75; row1 (last step masked) 1 + 1 = 2
  rewards = _f32([[1, 2, 3], [1, 2, 3]])
  mask = _f32([[1, 1, 1], [1, 1, 0]])
  np.testing.assert_allclose(advantages.discounted_return(rewards, mask, 0.5), [2.75, 2.0])
  np.testing.assert_allclose(advantages.discounted_return(rewards, None, 1.0), [6.0, 6.0])


def test_reward_to_go_by_hand():
  # r = [1, 2, 4], gamma 0.5:
  #   G_t = sum_{t' >= t} gamma^{t'-t} r_t': G2 = 4, G1 = 2 + 0.5*4 = 4, G0 = 1 + 0.5*4 = 3
  #   discount_from_start: gamma^t G_t = [3, 0.5*4, 0.25*4] = [3, 2, 1]
  # with the last step masked: G = [1 + 0.5*2, 2, 0] = [2, 2, 0]; from start [2, 1, 0]
  # gamma 1: [7, 6, 4] both ways.
  r = _f32([[1, 2, 4]])
  np.testing.assert_allclose(advantages.reward_to_go(r, None, 0.5, discount_from_start=False),
                             [[3, 4, 4]])
  np.testing.assert_allclose(advantages.reward_to_go(r, None, 0.5, discount_from_start=True),
                             [[3, 2, 1]])
  m = _f32([[1, 1, 0]])
  np.testing.assert_allclose(advantages.reward_to_go(r, m, 0.5, discount_from_start=False),
                             [[2, 2, 0]])
  np.testing.assert_allclose(advantages.reward_to_go(r, m, 0.5), [[2, 1, 0]])
  np.testing.assert_allclose(advantages.reward_to_go(r, None, 1.0), [[7, 6, 4]])


# ---------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------
#
# x = [[1, 2, 3], [4, 5, 6], [7, 8, 9]], mask [[1, 1, 0], [1, 1, 1], [0, 0, 0]] (row 2 all masked)
#   token_mean:          (1 + 2 + 4 + 5 + 6) / 5 = 18 / 5 = 3.6
#   seq_mean_token_mean: (3/2 + 15/3 + 0) / 3 = 6.5 / 3 = 2.1666667  (the empty row counts in B)
#   seq_mean_token_sum:  (3 + 15 + 0) / 3 = 6
#   token_sum_norm:      18 / (3 * 3) = 2
# with a normalizer n the denominator is n: token_mean 18/10 = 1.8, seq_mean_token_mean 6.5/4 =
# 1.625, seq_mean_token_sum 18/6 = 3, token_sum_norm 18/36 = 0.5.
X = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
M = [[1, 1, 0], [1, 1, 1], [0, 0, 0]]


@pytest.mark.parametrize("name,expected,normalizer,expected_norm", [
    ("token_mean", 3.6, 10.0, 1.8),
    ("seq_mean_token_mean", 6.5 / 3, 4.0, 1.625),
    ("seq_mean_token_sum", 6.0, 6.0, 3.0),
    ("token_sum_norm", 2.0, 36.0, 0.5),
])
def test_aggregations_by_hand(name, expected, normalizer, expected_norm):
  fn = aggregation.AGGREGATIONS[name]
  x, m = _f32(X), _f32(M)
  np.testing.assert_allclose(fn(x, m), expected, rtol=1e-6)
  np.testing.assert_allclose(fn(x, m, _f32(normalizer)), expected_norm, rtol=1e-6)
  # An all-masked batch gives 0, not NaN.
  np.testing.assert_allclose(fn(x, jnp.zeros_like(m)), 0.0)


def test_token_mean_micro_batches_sum_to_the_full_batch():
  # Split rows {0} and {1, 2} with the global token count 5: 3/5 + 15/5 = 3.6.
  x, m = _f32(X), _f32(M)
  n = _f32(5.0)
  total = aggregation.token_mean(x[:1], m[:1], n) + aggregation.token_mean(x[1:], m[1:], n)
  np.testing.assert_allclose(total, 3.6, rtol=1e-6)


def test_discounting_counts_from_the_first_valid_step():
  # A masked prompt of two positions: gamma^t starts at the first response step.
  # rewards (1, 2) at valid steps 0 and 1, gamma 0.5: return 1 + 0.5 * 2 = 2;
  # reward-to-go from the start: step 0: 1 + 0.5*2 = 2, step 1: 0.5 * 2 = 1.
  r = jnp.asarray([[0.0, 0.0, 1.0, 2.0]])
  m = jnp.asarray([[0.0, 0.0, 1.0, 1.0]])
  np.testing.assert_allclose(advantages.discounted_return(r, m, 0.5), [2.0], atol=1e-6)
  np.testing.assert_allclose(advantages.reward_to_go(r, m, 0.5), [[0, 0, 2.0, 1.0]], atol=1e-6)
