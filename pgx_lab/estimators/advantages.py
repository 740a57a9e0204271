"""Advantages: rewards (and values) in, A_hat per sequence [B] or per token [B, T] out.

Pure array functions. Batch-major layout: `[B, T]` with a response mask `mask[B, T]` in {0, 1};
masked positions never leak into an advantage and come out as 0. Group ids are ints in [0, B)
(responses to one prompt share an id); groups are formed with segment sums over B segments, so no
static group count is needed and groups may have different sizes.
"""

from typing import Optional

import jax
import jax.numpy as jnp

from pgx_lab import validation

Array = jax.Array

SCALES = ("group", "batch", "none")


def _float_mask(mask: Optional[Array], like: Array) -> Array:
  if mask is None:
    return jnp.ones(like.shape, like.dtype)
  return mask.astype(like.dtype)


def _discount_powers(m: Array, gamma: float) -> Array:
  """gamma^t with t counted in valid steps from the first one (a masked prompt shifts nothing)."""
  t = jnp.maximum(jnp.cumsum(m, axis=1) - 1.0, 0.0)
  return jnp.asarray(gamma, m.dtype) ** t


def discounted_return(rewards: Array, mask: Optional[Array] = None, gamma: float = 1.0) -> Array:
  """The discounted return of each trajectory, R(tau) = sum_t gamma^t r_t.

  This is the weight of every score in REINFORCE (Williams 1992, eq. 11 with R(tau)). Time t
  counts valid steps from the first one, so masked prompt positions before it shift nothing.

  Args:
    rewards: [B, T] per-step rewards.
    mask: [B, T] valid-step mask (padding 0); None means every step is valid.
    gamma: discount factor in [0, 1].

  Returns:
    [B] returns.
  """
  validation.check_array("rewards", rewards, ndim=2)
  m = _float_mask(mask, rewards)
  return jnp.sum(jnp.where(m > 0, rewards, 0.0) * _discount_powers(m, gamma) * m, axis=1)


def reward_to_go(
    rewards: Array,
    mask: Optional[Array] = None,
    gamma: float = 1.0,
    *,
    discount_from_start: bool = True,
) -> Array:
  """Reward-to-go, the per-step weight of GPOMDP (Baxter & Bartlett 2001; Peters & Schaal 2008).

  With `discount_from_start=True` the weight of step t is sum_{t' >= t} gamma^{t'} r_{t'}, which
  makes sum_t weight_t * grad log pi(a_t|s_t) an unbiased estimate of grad J for
  J = E[sum_t gamma^t r_t] (the policy gradient theorem, Sutton et al. 2000, eq. 2). With False
  it is the common G_t = sum_{t' >= t} gamma^{t' - t} r_{t'} (biased for gamma < 1). As in
  `discounted_return`, t counts valid steps from the first one.

  Args:
    rewards: [B, T] per-step rewards.
    mask: [B, T] valid-step mask; None means every step is valid.
    gamma: discount factor.
    discount_from_start: see above.

  Returns:
    [B, T] reward-to-go, 0 at masked steps.
  """
  validation.check_array("rewards", rewards, ndim=2)
  m = _float_mask(mask, rewards)
  r = jnp.where(m > 0, rewards, 0.0) * m

  def step(carry, r_t):
    g = r_t + gamma * carry
    return g, g

  _, g = jax.lax.scan(step, jnp.zeros(rewards.shape[:1], rewards.dtype), r.T, reverse=True)
  g = g.T
  if discount_from_start:
    g = g * _discount_powers(m, gamma)
  return g * m


def gae(
    rewards: Array,
    values: Array,
    discounts: Array,
    lambda_: float = 0.95,
    mask: Optional[Array] = None,
) -> Array:
  """Generalised advantage estimation (Schulman et al. 2016, eq. 16), truncated at T.

  A_t = sum_{l >= 0} (prod_{k < l} discounts_{t+k} lambda) delta_{t+l},
  delta_t = r_t + discounts_t V_{t+1} - V_t. Matches `rlax.truncated_generalized_advantage_estimation`
  applied to each row.

  Args:
    rewards: [B, T] rewards r_t.
    values: [B, T + 1] values V_0..V_T; V_T bootstraps the truncated tail.
    discounts: [B, T] discounts gamma_t (0 where the episode terminated at t).
    lambda_: the GAE lambda.
    mask: [B, T] valid-step mask; masked steps get advantage 0 and cut the recursion.

  Returns:
    [B, T] advantages (gradient stopped).
  """
  validation.check_array("rewards", rewards, ndim=2)
  validation.check_array("values", values, ndim=2)
  validation.check_array("discounts", discounts, ndim=2)
  b, t = rewards.shape
  validation.check_shape("values", values, (b, t + 1))
  validation.check_shape("discounts", discounts, (b, t), against="rewards")
  m = _float_mask(mask, rewards)
  r = jnp.where(m > 0, rewards, 0.0)
  delta = r + discounts * values[:, 1:] - values[:, :-1]
  delta = jnp.where(m > 0, delta, 0.0)
  decay = discounts * lambda_ * m

  def step(carry, xs):
    d, c = xs
    a = d + c * carry
    return a, a

  _, adv = jax.lax.scan(step, jnp.zeros((b,), rewards.dtype), (delta.T, decay.T), reverse=True)
  return jax.lax.stop_gradient(adv.T * m)


def batch_mean_baseline(rewards: Array, mask: Optional[Array] = None) -> Array:
  """R_i - mean_j R_j over the valid entries (rows for [B], tokens for [B, T])."""
  validation.check_array("rewards", rewards, ndim=(1, 2))
  m = _float_mask(mask, rewards)
  mean = jnp.sum(rewards * m) / jnp.maximum(jnp.sum(m), 1.0)
  return (rewards - mean) * m


def _group_stats(rewards: Array, group_ids: Array, weights: Array):
  """Per-example group count, mean and sum of squared deviations (over weight-1 entries)."""
  n = rewards.shape[0]
  count = jax.ops.segment_sum(weights, group_ids, num_segments=n)
  total = jax.ops.segment_sum(rewards * weights, group_ids, num_segments=n)
  mean = total / jnp.maximum(count, 1.0)
  dev = (rewards - mean[group_ids]) * weights
  ssq = jax.ops.segment_sum(dev**2, group_ids, num_segments=n)
  return count[group_ids], mean[group_ids], ssq[group_ids], total[group_ids]


def _constant_groups(rewards: Array, group_ids: Array, weights: Array) -> Array:
  """[B] bool: True where every valid reward of the example's group is the same."""
  n = rewards.shape[0]
  hi = jax.ops.segment_max(jnp.where(weights > 0, rewards, -jnp.inf), group_ids, num_segments=n)
  lo = jax.ops.segment_min(jnp.where(weights > 0, rewards, jnp.inf), group_ids, num_segments=n)
  return (hi == lo)[group_ids]


def _check_groups(rewards: Array, group_ids: Array) -> None:
  validation.check_array("rewards", rewards, ndim=1)
  validation.check_array("group_ids", group_ids, ndim=1, kind="int")
  validation.check_shape("group_ids", group_ids, rewards.shape, against="rewards")


def group_normalized(
    rewards: Array,
    group_ids: Array,
    *,
    scale: str = "group",
    unbiased_std: bool = False,
    eps: float = 1e-6,
    eps_in_sqrt: bool = False,
    valid: Optional[Array] = None,
) -> Array:
  """Group-relative advantage of GRPO (Shao et al. 2024, DeepSeekMath, eq. 3 / sec. 4.1.2).

  A_i = (R_i - mean_{g(i)} R) / (std + eps), with the std taken over the group (`scale="group"`,
  GRPO), over the whole batch keeping the group mean (`"batch"`, as in TRL's scale_rewards="batch"),
  or not at all (`"none"`, Dr.GRPO: Liu et al. 2025, "Understanding R1-Zero-like training", eq. 3).
  A zero-variance group gives A = 0, never NaN.

  Args:
    rewards: [B] sequence rewards.
    group_ids: [B] int group ids in [0, B).
    scale: "group", "batch" or "none".
    unbiased_std: divide the squared deviations by n - 1 instead of n (torch.std's default).
    eps: added to the std (or to the variance inside the square root if `eps_in_sqrt`).
    eps_in_sqrt: where eps goes (see above).
    valid: [B] optional 0/1 weights; invalid rows neither enter the statistics nor get advantage.

  Returns:
    [B] advantages.
  """
  _check_groups(rewards, group_ids)
  validation.check_option("scale", scale, SCALES)
  w = _float_mask(valid, rewards)
  count, mean, ssq, _ = _group_stats(rewards, group_ids, w)
  # A group of equal rewards gets exactly 0: total / count is not exact in float32, and the
  # residue divided by (tiny std + eps) would otherwise be a large spurious advantage.
  centred = jnp.where(_constant_groups(rewards, group_ids, w), 0.0, (rewards - mean) * w)
  if scale == "none":
    return centred
  if scale == "group":
    n, sq = count, ssq
  else:
    n = jnp.sum(w)
    bmean = jnp.sum(rewards * w) / jnp.maximum(n, 1.0)
    sq = jnp.sum(((rewards - bmean) * w) ** 2)
  denom_n = jnp.maximum(n - 1.0, 1.0) if unbiased_std else jnp.maximum(n, 1.0)
  var = sq / denom_n
  std = jnp.sqrt(var + eps) if eps_in_sqrt else jnp.sqrt(var) + eps
  return centred / std


def leave_one_out(rewards: Array, group_ids: Array, valid: Optional[Array] = None) -> Array:
  """RLOO advantage (Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for free!").

  A_i = R_i - (sum_{j in g(i), j != i} R_j) / (G_i - 1). The baseline is independent of sample i,
  so the estimator stays unbiased. A group of one has no other sample: its baseline is 0.

  Args:
    rewards: [B] sequence rewards.
    group_ids: [B] int group ids in [0, B).
    valid: [B] optional 0/1 weights (invalid rows are left out of every group).

  Returns:
    [B] advantages.
  """
  _check_groups(rewards, group_ids)
  w = _float_mask(valid, rewards)
  count, _, _, total = _group_stats(rewards, group_ids, w)
  others = count - w
  baseline = jnp.where(others > 0, (total - rewards * w) / jnp.maximum(others, 1.0), 0.0)
  return (rewards - baseline) * w


def whiten(x: Array, mask: Optional[Array] = None, *, shift_mean: bool = True, eps: float = 1e-8) -> Array:
  """(x - mean) / std over the valid entries (PPO's advantage normalisation).

  Args:
    x: [B] or [B, T] values.
    mask: same shape, 0/1; None means all valid. Masked entries come out 0.
    shift_mean: subtract the mean (False only rescales, as some PPO variants do).
    eps: added to the variance inside the square root, so constant input gives 0, not NaN.
  """
  validation.check_array("x", x, ndim=(1, 2))
  m = _float_mask(mask, x)
  n = jnp.maximum(jnp.sum(m), 1.0)
  mean = jnp.sum(x * m) / n
  var = jnp.sum(((x - mean) * m) ** 2) / n
  out = (x - mean) if shift_mean else x
  # Constant input gives exactly 0 (the float32 residue of x - mean would be amplified).
  constant = jnp.max(jnp.where(m > 0, x, -jnp.inf)) == jnp.min(jnp.where(m > 0, x, jnp.inf))
  out = jnp.where(constant & shift_mean, 0.0, out)
  return out * jax.lax.rsqrt(var + eps) * m
