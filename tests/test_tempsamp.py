"""TempSamp-R1 parts (pgx_lab/estimators/tempsamp.py) against hand computations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgx_lab import types
from pgx_lab.estimators import advantage_parts
from pgx_lab.estimators import presets
from pgx_lab.estimators import tempsamp


def test_soft_reward_hand_values():
  iou = jnp.array([0.0, 0.5, 0.8, 1.0])
  got = np.asarray(tempsamp.soft_reward(iou))
  e1 = math.e - 1.0
  want = [0.8 - (math.exp(0.8) - 1) / e1, 0.8 - (math.exp(0.3) - 1) / e1, 0.8,
          0.8 + 0.01 * math.log(1.2)]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  assert abs(got[0] - 0.0868) < 1e-3


def test_soft_reward_continuous_and_monotone():
  tau = 0.8
  left = tempsamp.soft_reward(jnp.array([tau - 1e-5]))[0]
  right = tempsamp.soft_reward(jnp.array([tau + 1e-5]))[0]
  assert abs(float(left) - tau) < 1e-4 and abs(float(right) - tau) < 1e-4
  x = jnp.linspace(0.0, 1.0, 101)
  y = np.asarray(tempsamp.soft_reward(x, tau=0.6, alpha=2.0))
  assert np.all(np.diff(y) > 0)
  np.testing.assert_array_equal(np.asarray(tempsamp.transform_rewards(x, "linear")), np.asarray(x))


def _sampled(n=2, g=3, t=2):
  b = n * g
  tokens = jnp.arange(b * t, dtype=jnp.int32).reshape(b, t)
  mask = jnp.ones((b, t))
  rewards = jnp.linspace(0.0, 0.5, b)
  gids = jnp.repeat(jnp.arange(n, dtype=jnp.int32) * g, g)
  gt_tokens = -jnp.ones((n, t), jnp.int32) * (jnp.arange(n, dtype=jnp.int32)[:, None] + 1)
  return tokens, mask, rewards, gids, gt_tokens, jnp.ones((n, t)), jnp.ones((n,))


def test_inject_replace_last_slot_and_group_stats():
  tokens, mask, rewards, gids, gt_tokens, gt_mask, gt_r = _sampled()
  out = tempsamp.inject_ground_truth(tokens, mask, rewards, gids, gt_tokens, gt_mask, gt_r,
                                     group_size=3)
  np.testing.assert_array_equal(np.asarray(out["is_gt"]), [0, 0, 1, 0, 0, 1])
  np.testing.assert_array_equal(np.asarray(out["tokens"][2]), [-1, -1])
  np.testing.assert_array_equal(np.asarray(out["tokens"][5]), [-2, -2])
  np.testing.assert_array_equal(np.asarray(out["tokens"][:2]), np.asarray(tokens[:2]))
  r = np.asarray(out["rewards"])
  np.testing.assert_allclose(r, [0.0, 0.1, 1.0, 0.3, 0.4, 1.0], atol=1e-6)
  np.testing.assert_array_equal(np.asarray(out["group_ids"]), np.asarray(gids))
  assert out["old_logp"] is None
  adv = np.asarray(tempsamp.advantages_from_iou(out["rewards"], out["group_ids"], transform="linear"))
  grp = r[:3]                                   # the GT row is in the group's mean and std
  np.testing.assert_allclose(adv[:3], (grp - grp.mean()) / (grp.std(ddof=1) + 1e-6), rtol=1e-5)
  soft = np.asarray(tempsamp.soft_reward(jnp.asarray(r)))
  adv_s = np.asarray(tempsamp.advantages_from_iou(out["rewards"], out["group_ids"]))
  s = soft[3:]
  np.testing.assert_allclose(adv_s[3:], (s - s.mean()) / (s.std(ddof=1) + 1e-6), rtol=1e-5)


def test_inject_append_and_old_logp():
  tokens, mask, rewards, gids, gt_tokens, gt_mask, gt_r = _sampled()
  old = -jnp.ones(tokens.shape)
  gt_old = -5.0 * jnp.ones(gt_tokens.shape)
  out = tempsamp.inject_ground_truth(tokens, mask, rewards, gids, gt_tokens, gt_mask, gt_r,
                                     group_size=3, mode="append", old_logp=old, gt_old_logp=gt_old)
  np.testing.assert_array_equal(np.asarray(out["is_gt"]), [0, 0, 0, 1, 0, 0, 0, 1])
  np.testing.assert_array_equal(np.asarray(out["group_ids"]), [0, 0, 0, 0, 3, 3, 3, 3])
  np.testing.assert_allclose(np.asarray(out["rewards"]), [0, 0.1, 0.2, 1, 0.3, 0.4, 0.5, 1], atol=1e-6)
  np.testing.assert_allclose(np.asarray(out["old_logp"][:, 0]), [-1, -1, -1, -5, -1, -1, -1, -5])
  np.testing.assert_array_equal(np.asarray(out["tokens"][7]), [-2, -2])
  out2 = tempsamp.inject_ground_truth(tokens, mask, rewards, gids, gt_tokens, gt_mask, gt_r,
                                      group_size=3, slot=0)
  np.testing.assert_array_equal(np.asarray(out2["is_gt"]), [1, 0, 0, 1, 0, 0])


def test_no_is_gives_ratio_one_and_score_gradient():
  logp = jnp.log(jnp.array([[0.5, 0.25], [0.2, 0.4]]))
  old = jnp.log(jnp.array([[0.1, 0.1], [0.1, 0.1]]))
  is_gt = jnp.array([False, True])

  def ratio(lp, opt):
    return jnp.exp(lp - tempsamp.gt_old_logp(lp, old, is_gt, opt))

  r = np.asarray(ratio(logp, "no_is"))
  assert np.all(r[1] == 1.0)                     # exactly 1 on the GT row
  np.testing.assert_allclose(r[0], [5.0, 2.5], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(ratio(logp, "on_policy"))[1], [2.0, 4.0], rtol=1e-5)
  g = jax.grad(lambda lp: jnp.sum(ratio(lp, "no_is")[1]))(logp)
  np.testing.assert_allclose(np.asarray(g), [[0, 0], [1, 1]], atol=1e-6)   # grad of log pi


def test_degenerate_groups_finite_and_estimator():
  gids = jnp.array([0, 0, 0, 3, 3, 3], jnp.int32)
  for iou in (jnp.zeros(6), jnp.full((6,), 0.7)):
    for tr in tempsamp.TRANSFORMS:
      adv = tempsamp.advantages_from_iou(iou, gids, transform=tr)
      assert np.all(np.asarray(adv) == 0.0)
  batch = types.SequenceBatch(mask=jnp.ones((6, 2)), old_logp=jnp.zeros((6, 2)),
                              rewards=jnp.array([0.0, 0.0, 1.0, 0.2, 0.9, 1.0]), group_ids=gids)
  est = presets.grpo().replace(advantage=tempsamp.advantage_part())
  loss, _ = jax.jit(est)(jnp.zeros((6, 2)), batch)
  assert np.isfinite(float(loss))


def test_bad_input():
  tokens, mask, rewards, gids, gt_tokens, gt_mask, gt_r = _sampled()
  args = (tokens, mask, rewards, gids, gt_tokens, gt_mask, gt_r)
  with pytest.raises(ValueError, match="mode"):
    tempsamp.inject_ground_truth(*args, group_size=3, mode="insert")
  with pytest.raises(ValueError, match="group_size"):
    tempsamp.inject_ground_truth(*args, group_size=4)
  with pytest.raises(ValueError, match="slot"):
    tempsamp.inject_ground_truth(*args, group_size=3, slot=3)
  with pytest.raises(ValueError, match="gt_tokens"):
    tempsamp.inject_ground_truth(tokens, mask, rewards, gids, gt_tokens[:1], gt_mask, gt_r,
                                 group_size=3)
  with pytest.raises(ValueError, match="old_logp"):
    tempsamp.inject_ground_truth(*args, group_size=3, old_logp=jnp.zeros(tokens.shape))
  with pytest.raises(ValueError, match="tau"):
    tempsamp.soft_reward(jnp.zeros(3), tau=1.5)
  with pytest.raises(ValueError, match="alpha"):
    tempsamp.advantage_part(alpha=0.0)
  with pytest.raises(ValueError, match="transform"):
    tempsamp.transform_rewards(jnp.zeros(3), "cubic")
  with pytest.raises(ValueError, match="gt_ratio"):
    tempsamp.gt_old_logp(jnp.zeros((2, 2)), jnp.zeros((2, 2)), jnp.zeros(2, bool), "clip")
  with pytest.raises(ValueError, match="is_gt"):
    tempsamp.gt_old_logp(jnp.zeros((2, 2)), jnp.zeros((2, 2)), jnp.zeros(3, bool))


def test_paper_fig2_group_soft_lifts_good_rollout():
  # Paper fig. 2: on-policy IoUs 0.6, 0.7, 0.5 and the GT's 1.0 (group mean 0.7). Linearly the
  # 0.7 rollout gets advantage 0; eq. 4 compresses the GT's lead, so it becomes positive.
  iou = jnp.array([0.6, 0.7, 0.5, 1.0])
  gids = jnp.zeros(4, jnp.int32)
  lin = np.asarray(tempsamp.advantages_from_iou(iou, gids, transform="linear"))
  assert abs(lin[1]) < 1e-5 and lin[0] < 0 and lin[2] < 0
  e1 = math.e - 1.0
  soft = np.array([0.8 - (math.exp(0.8 - x) - 1) / e1 for x in (0.6, 0.7, 0.5)]
                  + [0.8 + 0.01 * math.log(1.2)])
  want = (soft - soft.mean()) / (soft.std(ddof=1) + 1e-6)
  got = np.asarray(tempsamp.advantages_from_iou(iou, gids))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert got[1] > 0.1


def test_anchored_advantages_hand_values():
  # group 0: on-policy 0.2, 0.4, 0.9 + GT; group 4: all-zero on-policy + GT (no signal at all).
  r = jnp.array([0.2, 0.4, 0.9, 1.0, 0.0, 0.0, 0.0, 1.0])
  gids = jnp.array([0] * 4 + [4] * 4, jnp.int32)
  is_gt = jnp.array([0, 0, 0, 1, 0, 0, 0, 1], bool)
  got = np.asarray(tempsamp.anchored_advantages(r, gids, is_gt))
  on = np.array([0.2, 0.4, 0.9])
  a = (on - on.mean()) / (on.std(ddof=1) + 1e-6)     # the GT is left out of mean and std
  np.testing.assert_allclose(got[:3], a, rtol=1e-5)
  np.testing.assert_allclose(got[3], 1.2 * a.max(), rtol=1e-5)
  np.testing.assert_array_equal(got[4:], 0.0)
  got2 = np.asarray(tempsamp.anchored_advantages(r, gids, is_gt, lambda_off=0.5,
                                                 unbiased_std=False))
  b = (on - on.mean()) / (on.std() + 1e-6)
  np.testing.assert_allclose(got2[:4], list(b) + [0.5 * b.max()], rtol=1e-5)


def test_anchored_and_downscale_degenerate_and_jit():
  # one on-policy member + GT; a group holding only a GT row; an invalid row.
  r = jnp.array([0.3, 1.0, 1.0, 0.5, 0.7, 0.9])
  gids = jnp.array([0, 0, 2, 3, 3, 3], jnp.int32)
  is_gt = jnp.array([0, 1, 1, 0, 0, 1], bool)
  valid = jnp.array([1, 1, 1, 1, 0, 1.0])
  got = np.asarray(jax.jit(lambda r: tempsamp.anchored_advantages(r, gids, is_gt, valid=valid))(r))
  assert np.all(np.isfinite(got))
  np.testing.assert_array_equal(got, 0.0)   # single on-policy rows: z-score 0, so A_G = 0 too
  ds = np.asarray(tempsamp.downscale_ground_truth(r, is_gt))
  np.testing.assert_allclose(ds, [0.3, 0.8, 0.8, 0.5, 0.7, 0.8], rtol=1e-6)
  adv = np.asarray(tempsamp.advantages_from_iou(jnp.asarray(ds), gids, transform="linear"))
  assert np.all(np.isfinite(adv))
  zeros = tempsamp.anchored_advantages(jnp.zeros(6), gids, is_gt)
  assert np.all(np.asarray(zeros) == 0.0)


def test_anchored_and_downscale_bad_input():
  r, g, is_gt = jnp.zeros(4), jnp.zeros(4, jnp.int32), jnp.array([0, 0, 0, 1], bool)
  with pytest.raises(ValueError, match="lambda_off"):
    tempsamp.anchored_advantages(r, g, is_gt, lambda_off=-1.0)
  with pytest.raises(ValueError, match="is_gt"):
    tempsamp.anchored_advantages(r, g, is_gt[:3])
  with pytest.raises(ValueError, match="rewards"):
    tempsamp.anchored_advantages(jnp.zeros((4, 2)), g, is_gt)
  with pytest.raises(ValueError, match="fraction"):
    tempsamp.downscale_ground_truth(r, is_gt, fraction=1.5)
  with pytest.raises(ValueError, match="is_gt"):
    tempsamp.downscale_ground_truth(r, jnp.zeros((4, 1), bool))


def test_gt_group_diagnostics_hand_values():
  # group 0: on-policy 0, 0, 0 + GT 1; group 1: 0.2, 0.4, 0.6 + GT 1 (the official code's gtpo/*).
  r = jnp.array([0.0, 0.0, 0.0, 1.0, 0.2, 0.4, 0.6, 1.0])
  adv = jnp.array([-0.5, -0.5, -0.5, 1.5, -1.0, -0.3, 0.2, 1.1])
  is_gt = jnp.array([0, 0, 0, 1] * 2, bool)
  got = tempsamp.gt_group_diagnostics(r, adv, is_gt, 4)
  sig_g = (np.std([0, 0, 0, 1.0]) + np.std([0.2, 0.4, 0.6, 1.0])) / 2     # population std
  sig_op = (0.0 + np.std([0.2, 0.4, 0.6])) / 2
  np.testing.assert_allclose(float(got["sigma_ratio_of_means"]), sig_g / sig_op, rtol=1e-5)
  np.testing.assert_allclose(float(got["gt_adv_mag_mean"]), (1.5 + 1.1) / 2, rtol=1e-6)
  flat = tempsamp.gt_group_diagnostics(jnp.full((8,), 0.3), adv, is_gt, 4)   # sigma_op = 0
  assert float(flat["sigma_ratio_of_means"]) == 0.0 and not bool(flat["sigma_ratio_defined"])
  assert bool(got["sigma_ratio_defined"]) and int(got["n_gt"]) == 2
  none = tempsamp.gt_group_diagnostics(r, adv, jnp.zeros(8, bool), 4)       # no GT row
  assert float(none["gt_adv_mag_mean"]) == 0.0 and int(none["n_gt"]) == 0
  with pytest.raises(ValueError, match="group_size"):
    tempsamp.gt_group_diagnostics(r, adv, is_gt, 3)
  with pytest.raises(ValueError, match="advantages"):
    tempsamp.gt_group_diagnostics(r, adv[:4], is_gt, 4)


def test_format_reward_inert_under_group_zscore():
  # the official total reward r(IoU) + 0.1 * format with format = 1 on every row: a group shift.
  iou = jnp.array([0.0, 0.3, 0.9, 1.0, 0.0, 0.0, 0.0, 1.0])
  gids = jnp.array([0] * 4 + [4] * 4, jnp.int32)
  for tr in tempsamp.TRANSFORMS:
    a = tempsamp.advantages_from_iou(iou, gids, transform=tr)
    b = tempsamp.advantages_from_iou(iou, gids, transform=tr, format_rewards=jnp.ones(8))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_top_p_filter_follows_vllm_rule():
  # vLLM (the official code's sampler): sort ascending, drop tokens whose cumulative probability
  # is <= 1 - top_p, never the most likely one; the experiment samples with sampling.top_p_filter.
  from pgx_lab.models import sampling
  probs = np.array([0.15, 0.5, 0.05, 0.3])           # shuffled so the inverse sort is exercised
  logits = jnp.log(jnp.asarray(probs))
  for top_p, keep in ((0.85, [1, 1, 0, 1]), (0.6, [0, 1, 0, 1]), (0.1, [0, 1, 0, 0]),
                      (1.0, [1, 1, 1, 1])):
    got = np.asarray(sampling.top_p_filter(logits, top_p))
    np.testing.assert_array_equal(np.isfinite(got), np.array(keep, bool))
    np.testing.assert_allclose(got[np.isfinite(got)], np.log(probs)[np.array(keep, bool)],
                               rtol=1e-6)


def test_official_loss_at_ratio_one_is_token_mean_policy_gradient():
  # the experiment's estimator (clip 0.2 / 0.28, dual clip 3, token mean) with old = sg(logp):
  # gradient = -(1 / (B T)) sum_i A_i sum_t grad log pi_it, whatever the clip constants.
  est = presets.grpo("bnpo", eps_high=0.28, dual_clip=3.0, unbiased_std=True).replace(
      advantage=advantage_parts.precomputed())
  logp = jnp.log(jnp.array([[0.5, 0.2], [0.1, 0.9], [0.3, 0.3]]))
  adv = jnp.array([2.0, -5.0, 0.5])
  gids = jnp.zeros(3, jnp.int32)

  def loss(lp):
    batch = types.SequenceBatch(mask=jnp.ones_like(lp), old_logp=jax.lax.stop_gradient(lp),
                                group_ids=gids, advantages=adv)
    return est(lp, batch)[0]
  g = np.asarray(jax.grad(loss)(logp))
  np.testing.assert_allclose(g, -np.repeat(np.asarray(adv)[:, None], 2, 1) / 6.0, rtol=1e-6)
