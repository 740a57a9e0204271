"""TempSamp-R1 (Li et al., NeurIPS 2025, arXiv 2509.18056): a ground-truth member in every GRPO
group and the paper's ways to keep it from dominating the group advantage.

Audited (session 5) against the official code. The paper's code link, github.com/HVision-NKU/
TempSamp-R1, serves the same README as ZhangZikun6666/TempSamp-R1 (the paper's seven authors,
"our paper", the NeurIPS citation; verl/EasyR1 based; results with Qwen3.5-4B on TimeLens-Bench,
a later setup than the paper's Qwen2.5-VL-7B), so that repository, the one read here, is taken as
the official code. Below, the code's choices (where the paper's eq. 1-4 speak, they agree;
the format weight, the clip constants, top_p and the absence of KL are the code's alone):
  * group [`RayPPOTrainer._inject_gt_rollout_in_gen_output`; eq. 2]: the GT response
    "<answer> s to e </answer>" REPLACES slot `gt_replace_index` = -1 (the last) of every group of
    rollout.n = 8: G - 1 samples + 1 GT (`mode="replace"`; `mode="append"`, a (G+1)-th member, is
    an earlier reading kept as an option);
  * advantage [`core_algos.compute_grpo_outcome_advantage`]: the GT row enters the group mean and
    std like any rollout, std = torch.std (unbiased), (r - mean) / (std + 1e-6): the defaults here;
  * ratio [`dp_actor.update_policy`, VERL_SKIP_OLD_LOGPROBS=1, ppo_epochs 1, one mini-batch per
    rollout batch]: old log-probs = the first forward's log-probs, detached, for EVERY row (GT
    included), so every ratio is exactly 1 and the gradient is A grad log pi; the clip (0.2 / 0.28,
    dual clip 3) never binds. `gt_old_logp` keeps "on_policy" (recomputed behaviour log-probs)
    and "no_is" (ratio 1 by construction) for several updates per batch; with one update they agree;
  * soft advantage = reward shaping [`scripts/timelens/timelens_reward.py`, `transform_rewards`;
    eq. 4] applied to the IoU of every row (GT included) BEFORE the group normalisation:
    r~ = tau + a1 ln((r - tau) + 1) for r >= tau, r~ = tau - (exp(a2 (tau - r)) - 1) / (exp(a2) - 1)
    below, tau = 0.8, a1 = 0.01 (hard-coded; `top_scale` here), a2 = 1 (`alpha`);
    `transform="linear"` is the identity (plain IoU);
  * total reward = r~(IoU) + 0.1 * format (1 when "<answer>" holds a parseable "X to Y"; a reversed
    interval parses, scores IoU 0); IoU = max(0, min(e, e*) - max(s, s*)) / (max(e, e*) - min(s, s*));
  * no KL (disable_kl, kl_coef 0), no entropy term, token-mean loss ("token" loss_avg_mode);
    rollouts at temperature 1 with top_p 0.85 (a sampler setting: see experiments/papers/
    tempsamp_r1.py); AdamW lr 1e-6, weight decay 0.01, grad-norm clip 1.0.
`gt_group_diagnostics` computes two of the code's logged GT statistics (gtpo/* metrics).
The paper's two other strategies (sec. 3.2, Table 4, where eq. 4 is best; not in the code) are
here too: reward downscaling (`downscale_ground_truth`: the GT reward set to 80% of the maximum)
and advantage anchoring (`anchored_advantages`, eq. 3). Hybrid CoT (sec. 3.3) is a training
schedule and does not change the estimator; it is not in the code either.
"""

from typing import Dict, Optional

import jax
import jax.numpy as jnp

from pgx_lab import validation
from pgx_lab.estimators import advantages

Array = jax.Array

MODES = ("replace", "append")
GT_RATIOS = ("on_policy", "no_is")
TRANSFORMS = ("soft", "linear")


def _check_soft_params(tau: float, alpha: float, top_scale: float) -> None:
  if not isinstance(tau, (int, float)) or not 0.0 < tau < 1.0:
    raise ValueError(f"`tau` must be a number in (0, 1), got {tau!r}.")
  validation.check_positive("alpha", alpha)
  validation.check_positive("top_scale", top_scale, allow_zero=True)


def soft_reward(iou: Array, tau: float = 0.8, alpha: float = 1.0, top_scale: float = 0.01) -> Array:
  """TempSamp-R1's asymmetric soft reward r'(iou), the paper's eq. 4 (see module doc).

  r'(iou) = tau + top_scale * log(iou - tau + 1) for iou >= tau, and
  r'(iou) = tau - (exp(alpha (tau - iou)) - 1) / (exp(alpha) - 1) below; continuous at tau
  (both sides give tau) and increasing. With tau = 0.8, alpha = 1: r'(0) ~ 0.0868, r'(1) ~ 0.8018.

  Args:
    iou: [...] float rewards in [0, 1] (temporal IoU).
    tau: threshold in (0, 1).
    alpha: alpha_2 of eq. 4, sharpness of the ramp below tau (1), > 0.
    top_scale: alpha_1 of eq. 4, slope of the log plateau above tau (0.01), >= 0.

  Returns:
    [...] transformed rewards, same shape as `iou`.
  """
  validation.check_array("iou", iou, kind="float")
  _check_soft_params(tau, alpha, top_scale)
  above = iou >= tau
  top = tau + top_scale * jnp.log(jnp.where(above, iou - tau + 1.0, 1.0))
  bottom = tau - jnp.expm1(alpha * (tau - iou)) / jnp.expm1(alpha)
  return jnp.where(above, top, bottom)


def transform_rewards(iou: Array, transform: str = "soft", tau: float = 0.8, alpha: float = 1.0,
                      top_scale: float = 0.01) -> Array:
  """`soft_reward` (transform="soft") or the identity (transform="linear") on `iou` [...]."""
  validation.check_option("transform", transform, TRANSFORMS)
  if transform == "linear":
    validation.check_array("iou", iou, kind="float")
    return iou
  return soft_reward(iou, tau, alpha, top_scale)


def advantages_from_iou(iou: Array, group_ids: Array, *, transform: str = "soft",
                        tau: float = 0.8, alpha: float = 1.0, top_scale: float = 0.01,
                        format_rewards: Optional[Array] = None, format_coef: float = 0.1,
                        unbiased_std: bool = True, eps: float = 1e-6,
                        valid: Optional[Array] = None) -> Array:
  """Group-normalised advantage of the transformed reward r'(iou) + format_coef * format.

  The ground-truth rows are ordinary members of their group here (they enter mean and std).
  Defaults follow the official code: unbiased std (torch.std), eps 1e-6 added to the std,
  format weight 0.1. A constant group gets advantage 0 (`advantages.group_normalized`).

  Args:
    iou: [B] float IoU rewards (ground-truth rows included, usually 1).
    group_ids: [B] int group ids in [0, B).
    transform: "soft" or "linear".
    tau, alpha, top_scale: see `soft_reward`.
    format_rewards: [B] optional float format rewards (1 for a parseable answer).
    format_coef: weight of the format reward.
    unbiased_std, eps: see `advantages.group_normalized`.
    valid: [B] optional 0/1 row weights.

  Returns:
    [B] advantages.
  """
  validation.check_array("iou", iou, ndim=1)
  r = transform_rewards(iou, transform, tau, alpha, top_scale)
  if format_rewards is not None:
    validation.check_array("format_rewards", format_rewards, ndim=1)
    validation.check_shape("format_rewards", format_rewards, iou.shape, against="iou")
    r = r + format_coef * format_rewards
  return advantages.group_normalized(r, group_ids, scale="group", unbiased_std=unbiased_std,
                                     eps=eps, valid=valid)


def advantage_part(transform: str = "soft", tau: float = 0.8, alpha: float = 1.0,
                   top_scale: float = 0.01, unbiased_std: bool = True, eps: float = 1e-6):
  """An `Estimator` advantage part: `batch.rewards` [B] read as IoU, see `advantages_from_iou`."""
  validation.check_option("transform", transform, TRANSFORMS)
  _check_soft_params(tau, alpha, top_scale)

  def part(batch):
    who = f"tempsamp.advantage_part(transform={transform!r})"
    iou = validation.require("batch.rewards", batch.rewards, who)
    gids = validation.require("batch.group_ids", batch.group_ids, who)
    rows = (batch.mask.sum(axis=1) > 0).astype(jnp.float32)
    return advantages_from_iou(iou, gids, transform=transform, tau=tau, alpha=alpha,
                               top_scale=top_scale, unbiased_std=unbiased_std, eps=eps, valid=rows)

  return part


def inject_ground_truth(tokens: Array, mask: Array, rewards: Array, group_ids: Array,
                        gt_tokens: Array, gt_mask: Array, gt_rewards: Array, *, group_size: int,
                        mode: str = "replace", slot: int = -1, old_logp: Optional[Array] = None,
                        gt_old_logp: Optional[Array] = None) -> Dict[str, Optional[Array]]:
  """Puts the ground-truth response into every group (TempSamp-R1's off-policy member).

  Groups are contiguous blocks of `group_size` rows (rows g*G .. g*G + G - 1 form group g) and
  share one id. With mode="replace" (the paper's eq. 2: G - 1 samples + 1 GT) row g*G + slot of
  each group is overwritten by the ground truth, so B stays n*G; with mode="append" (earlier
  reading) the ground truth becomes member G+1 of each group and B becomes n*(G+1) (rows
  regrouped so groups stay contiguous; a GT row takes the id of its group's first row).

  Args:
    tokens: [B, T] int sampled tokens, B = n * group_size, aligned with `mask` (for a batch of
      `rollout.sequences.sample_groups`, whose `tokens` are prompt + response, pass the response
      part `extras["response"]` and re-attach the prompts after injection).
    mask: [B, T] response masks.
    rewards: [B] float rewards of the samples (e.g. IoU).
    group_ids: [B] int group ids, constant inside each contiguous block.
    gt_tokens: [n, T] int ground-truth responses, one per group.
    gt_mask: [n, T] their response masks.
    gt_rewards: [n] float their rewards (IoU of the ground truth with itself: 1).
    group_size: G, the number of rows per group in the input (static int >= 1; >= 2 to replace).
    mode: "replace" or "append".
    slot: which slot is replaced, in [-G, G) (mode="replace" only); default the last.
    old_logp: [B, T] optional behaviour log-probs of the samples. None when old log-probs are
      computed for every row after injection (as the official code does); then the output
      old_logp is None.
    gt_old_logp: [n, T] behaviour-policy log-probs of the ground truth; required with `old_logp`.

  Returns:
    dict with tokens, mask, rewards, group_ids, old_logp (or None) and is_gt [B'] bool.
  """
  validation.check_option("mode", mode, MODES)
  if not isinstance(group_size, int) or group_size < 1:
    raise ValueError(f"`group_size` must be a positive int, got {group_size!r}.")
  validation.check_array("tokens", tokens, ndim=2, kind="int")
  b, t = tokens.shape
  if b % group_size:
    raise ValueError(f"`group_size` {group_size} must divide the batch size {b} of `tokens`.")
  n, g = b // group_size, group_size
  if mode == "replace" and (g < 2 or not -g <= slot < g):
    raise ValueError(f"`slot` must be in [-{g}, {g}) with group_size >= 2, got slot={slot!r}, "
                     f"group_size={g}.")
  validation.check_array("mask", mask, ndim=2, kind="number")
  validation.check_shape("mask", mask, (b, t), against="tokens")
  validation.check_array("rewards", rewards, ndim=1)
  validation.check_shape("rewards", rewards, (b,), against="tokens rows")
  validation.check_array("group_ids", group_ids, ndim=1, kind="int")
  validation.check_shape("group_ids", group_ids, (b,), against="tokens rows")
  validation.check_array("gt_tokens", gt_tokens, ndim=2, kind="int")
  validation.check_shape("gt_tokens", gt_tokens, (n, t), against="one row per group")
  validation.check_array("gt_mask", gt_mask, ndim=2, kind="number")
  validation.check_shape("gt_mask", gt_mask, (n, t), against="gt_tokens")
  validation.check_array("gt_rewards", gt_rewards, ndim=1)
  validation.check_shape("gt_rewards", gt_rewards, (n,), against="one per group")
  if (old_logp is None) != (gt_old_logp is None):
    raise ValueError("`old_logp` and `gt_old_logp` must be given together (or both None).")
  pairs = [("tokens", tokens, gt_tokens), ("mask", mask, gt_mask.astype(mask.dtype)),
           ("rewards", rewards, gt_rewards.astype(rewards.dtype)),
           ("group_ids", group_ids, group_ids.reshape(n, g)[:, 0])]
  if old_logp is not None:
    validation.check_array("old_logp", old_logp, ndim=2)
    validation.check_shape("old_logp", old_logp, (b, t), against="tokens")
    validation.check_array("gt_old_logp", gt_old_logp, ndim=2)
    validation.check_shape("gt_old_logp", gt_old_logp, (n, t), against="gt_tokens")
    pairs.append(("old_logp", old_logp, gt_old_logp.astype(old_logp.dtype)))

  out = {"old_logp": None}
  for name, x, gt in pairs:
    blocks = x.reshape((n, g) + x.shape[1:])
    if mode == "replace":
      out[name] = blocks.at[:, slot].set(gt).reshape(x.shape)
    else:
      out[name] = jnp.concatenate([blocks, gt[:, None]], 1).reshape((n * (g + 1),) + x.shape[1:])
  if mode == "replace":
    out["is_gt"] = jnp.zeros((n, g), bool).at[:, slot].set(True).reshape(b)
  else:
    out["is_gt"] = jnp.concatenate([jnp.zeros((n, g), bool), jnp.ones((n, 1), bool)], 1).reshape(-1)
  return out


def gt_old_logp(logp: Array, old_logp: Array, is_gt: Array, gt_ratio: str = "on_policy") -> Array:
  """The old log-probs that set the ratio pi_theta / pi_old of the ground-truth rows.

  "on_policy" (default; with the official code's one update per batch, where old log-probs are
  the detached current ones for every row, both options give ratio 1): unchanged, the GT rows keep the recomputed
  behaviour log-probs like any rollout. "no_is": GT rows get old_logp := sg(logp), so their ratio
  is exactly 1 in value while its gradient is grad log pi (no importance weight).

  Args:
    logp: [B, T] current log-probs of the taken tokens (differentiable).
    old_logp: [B, T] behaviour log-probs.
    is_gt: [B] bool, True on ground-truth rows.
    gt_ratio: "on_policy" or "no_is".

  Returns:
    [B, T] old log-probs to put in the batch.
  """
  validation.check_option("gt_ratio", gt_ratio, GT_RATIOS)
  validation.check_array("logp", logp, ndim=2)
  validation.check_array("old_logp", old_logp, ndim=2)
  validation.check_shape("old_logp", old_logp, logp.shape, against="logp")
  validation.check_array("is_gt", is_gt, ndim=1, kind="number")
  validation.check_shape("is_gt", is_gt, logp.shape[:1], against="logp rows")
  if gt_ratio == "on_policy":
    return old_logp
  return jnp.where(is_gt.astype(bool)[:, None], jax.lax.stop_gradient(logp), old_logp)


def downscale_ground_truth(rewards: Array, is_gt: Array, fraction: float = 0.8,
                           max_reward: float = 1.0) -> Array:
  """Reward downscaling (paper sec. 3.2): the GT reward is set to `fraction` of the maximum.

  Args:
    rewards: [B] float rewards (GT rows included).
    is_gt: [B] bool, True on ground-truth rows.
    fraction: the fixed fraction (0.8 in the paper), in [0, 1].
    max_reward: the maximum possible reward (1 for IoU).

  Returns:
    [B] rewards with fraction * max_reward on the GT rows.
  """
  validation.check_array("rewards", rewards, ndim=1, kind="float")
  validation.check_array("is_gt", is_gt, ndim=1, kind="number")
  validation.check_shape("is_gt", is_gt, rewards.shape, against="rewards")
  if not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
    raise ValueError(f"`fraction` must be a number in [0, 1], got {fraction!r}.")
  return jnp.where(is_gt.astype(bool), jnp.asarray(fraction * max_reward, rewards.dtype), rewards)


def anchored_advantages(rewards: Array, group_ids: Array, is_gt: Array, *, lambda_off: float = 1.2,
                        unbiased_std: bool = True, eps: float = 1e-6,
                        valid: Optional[Array] = None) -> Array:
  """Advantage anchoring, the paper's eq. 3: A_G = lambda_off * max of the on-policy advantages.

  The GT rows are left out of the group mean and std; the on-policy rows get the plain GRPO
  z-score over the on-policy rows of their group, and every GT row gets lambda_off times the
  largest on-policy advantage of its group (0 when the group has no on-policy row, or when its
  on-policy rewards are all equal, where every on-policy advantage is 0).

  Args:
    rewards: [B] float rewards (use the plain IoU: the paper anchors instead of shaping).
    group_ids: [B] int group ids in [0, B).
    is_gt: [B] bool, True on ground-truth rows.
    lambda_off: the scale (1.2 in the paper), >= 0.
    unbiased_std, eps: see `advantages.group_normalized`.
    valid: [B] optional 0/1 row weights; invalid rows get 0 and enter no statistic.

  Returns:
    [B] advantages.
  """
  validation.check_array("rewards", rewards, ndim=1, kind="float")
  validation.check_array("is_gt", is_gt, ndim=1, kind="number")
  validation.check_shape("is_gt", is_gt, rewards.shape, against="rewards")
  validation.check_positive("lambda_off", lambda_off, allow_zero=True)
  w = jnp.ones_like(rewards) if valid is None else jnp.asarray(valid, rewards.dtype)
  gt = is_gt.astype(bool)
  on = jnp.where(gt, 0.0, w)
  a = advantages.group_normalized(rewards, group_ids, scale="group", unbiased_std=unbiased_std,
                                  eps=eps, valid=on)
  best = jax.ops.segment_max(jnp.where(on > 0, a, -jnp.inf), group_ids,
                             num_segments=rewards.shape[0])
  best = jnp.where(jnp.isfinite(best), best, 0.0)
  return jnp.where(gt & (w > 0), lambda_off * best[group_ids], a)


def gt_group_diagnostics(rewards: Array, advantages: Array, is_gt: Array, group_size: int,
                         floor: float = 1e-3) -> Dict[str, Array]:
  """Two of the official code's GT-injection diagnostics (`compute_gtpo_advantage_diagnostics`
  in verl/trainer/ray_trainer.py, logged as gtpo/*), for contiguous groups of `group_size` rows.

  Per group: sigma_g = population std (unbiased=False, as the code) of all its rewards, sigma_op =
  that of its on-policy (non-GT) rows (0 with fewer than two).
    sigma_ratio_of_means = mean_groups sigma_g / mean_groups sigma_op, defined only when the
      latter is at least `floor` (the code's SIGMA_FLOOR 1e-3, which it applies to its per-group
      ratios; its ratio of means only checks > 0, which float rounding defeats when all on-policy
      rewards of every group are equal); 0 where undefined, with sigma_ratio_defined False;
    gt_adv_mag_mean = mean |A| over GT rows; 0 when there is none (n_gt = 0; the code logs
      nothing then).
  Finite input never gives NaN: undefined values are 0 and flagged.

  Args:
    rewards: [B] float total rewards as fed to the advantage (shaped IoU + format).
    advantages: [B] float advantages of the rows.
    is_gt: [B] bool, True on ground-truth rows.
    group_size: G (static int >= 2) dividing B.
    floor: smallest mean sigma_op for which the ratio is reported.

  Returns:
    dict of scalars: sigma_ratio_of_means, sigma_ratio_defined (bool), gt_adv_mag_mean, n_gt.
  """
  validation.check_array("rewards", rewards, ndim=1, kind="float")
  validation.check_array("advantages", advantages, ndim=1, kind="float")
  validation.check_shape("advantages", advantages, rewards.shape, against="rewards")
  validation.check_array("is_gt", is_gt, ndim=1, kind="number")
  validation.check_shape("is_gt", is_gt, rewards.shape, against="rewards")
  if not isinstance(group_size, int) or group_size < 2 or rewards.shape[0] % group_size:
    raise ValueError(f"`group_size` must be an int >= 2 dividing {rewards.shape[0]}, got "
                     f"{group_size!r}.")
  r = rewards.reshape(-1, group_size)
  on = 1.0 - is_gt.astype(bool).reshape(r.shape).astype(r.dtype)
  sigma_g = jnp.std(r, axis=1)
  n_on = on.sum(1)
  mu_on = (r * on).sum(1) / jnp.maximum(n_on, 1.0)
  var_on = (on * (r - mu_on[:, None]) ** 2).sum(1) / jnp.maximum(n_on, 1.0)
  sigma_op = jnp.where(n_on > 1, jnp.sqrt(var_on), 0.0)
  mean_op = sigma_op.mean()
  ok = mean_op >= floor
  ratio = jnp.where(ok, sigma_g.mean() / jnp.where(ok, mean_op, 1.0), 0.0)
  gt = is_gt.astype(bool)
  n_gt = jnp.sum(gt)
  mag = jnp.sum(jnp.where(gt, jnp.abs(advantages), 0.0)) / jnp.maximum(n_gt, 1)
  return {"sigma_ratio_of_means": ratio, "sigma_ratio_defined": ok, "gt_adv_mag_mean": mag,
          "n_gt": n_gt}
