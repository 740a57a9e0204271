"""Reference parts for `Estimator`: `part(logp, batch, adv, mask) -> (per_token_loss, metrics)`.

`adv` and `mask` are [B, T] (a sequence advantage is broadcast over its tokens); the loss is
per token, to be aggregated. The maths lives in `reference`.
"""

from typing import Optional

import jax
import jax.numpy as jnp

from pgx_lab import validation
from pgx_lab.estimators import reference

sg = jax.lax.stop_gradient


def _masked_mean(x, mask):
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _ratio_metrics(ratio, mask, clipped):
  big = jnp.where(mask > 0, ratio, -jnp.inf)
  return {
      "ratio_mean": sg(_masked_mean(ratio, mask)),
      "ratio_max": sg(jnp.where(jnp.sum(mask) > 0, jnp.max(big), 1.0)),
      "clip_fraction": sg(_masked_mean(clipped, mask)),
  }


def _old_logp(batch, who):
  return validation.require("batch.old_logp", batch.old_logp, who)


def on_policy():
  """No ratio: loss_t = -A_t log pi(y_t). REINFORCE, GPOMDP and SFT (sampled from pi_theta itself)."""

  def part(logp, batch, adv, mask):
    del batch
    return -sg(adv) * logp * mask, {}

  return part


def _check_clip(eps_low, eps_high):
  validation.check_positive("eps_low", eps_low)
  if eps_high is not None:
    validation.check_positive("eps_high", eps_high)


def token_clip(eps_low: float = 0.2, eps_high: Optional[float] = None, *,
               dual_clip: Optional[float] = None, ratio_cap: Optional[float] = None):
  """PPO's token-level clipped surrogate, with DAPO's eps_high, dual clip and a ratio cap.

  See `reference.clipped_surrogate_loss`. Needs `batch.old_logp`.
  """
  _check_clip(eps_low, eps_high)
  if dual_clip is not None and dual_clip <= 1.0:
    raise ValueError(f"`dual_clip` must be > 1, got {dual_clip!r}.")
  if ratio_cap is not None and ratio_cap <= 1.0:
    raise ValueError(f"`ratio_cap` must be > 1, got {ratio_cap!r}.")

  def part(logp, batch, adv, mask):
    r = reference.token_ratio(logp, _old_logp(batch, "token_clip"), mask)
    loss = reference.clipped_surrogate_loss(r, adv, eps_low, eps_high, dual_clip=dual_clip,
                                            ratio_cap=ratio_cap)
    clipped = reference.clip_fraction(sg(r), adv, eps_low, eps_high)
    return loss * mask, _ratio_metrics(sg(r), mask, clipped)

  return part


def sequence_clip(eps_low: float = 3e-4, eps_high: Optional[float] = 4e-4):
  """GSPO: the length-normalised sequence ratio s_i, clipped per sequence (Zheng et al. 2025, eq. 5-7).

  loss_i = -min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i), broadcast to the tokens of
  sequence i, so `seq_mean_token_mean` aggregation gives GSPO's mean over sequences. A_i is the
  mean advantage over the sequence's valid tokens (the sequence advantage itself when it is
  broadcast). Needs `batch.old_logp`.
  """
  _check_clip(eps_low, eps_high)

  def part(logp, batch, adv, mask):
    s = jnp.exp(reference.sequence_log_ratio(logp, _old_logp(batch, "sequence_clip"), mask))
    a_seq = jnp.sum(adv * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
    loss = reference.clipped_surrogate_loss(s, a_seq, eps_low, eps_high)
    clipped = reference.clip_fraction(sg(s), a_seq, eps_low, eps_high)
    row = (jnp.sum(mask, axis=1) > 0).astype(s.dtype)
    metrics = _ratio_metrics(sg(s), row, clipped)
    return loss[:, None] * mask, metrics

  return part


def gspo_token(eps_low: float = 3e-4, eps_high: Optional[float] = 4e-4):
  """GSPO-token (Zheng et al. 2025, eq. 13-14): ratio sg(s_i) pi(y_t) / sg(pi(y_t)), clipped per token.

  Equal in value to GSPO; with a per-token advantage each token gets its own weight. Needs
  `batch.old_logp`.
  """
  _check_clip(eps_low, eps_high)

  def part(logp, batch, adv, mask):
    s = reference.gspo_token_ratio(logp, _old_logp(batch, "gspo_token"), mask)
    loss = reference.clipped_surrogate_loss(s, adv, eps_low, eps_high)
    clipped = reference.clip_fraction(sg(s), adv, eps_low, eps_high)
    return loss * mask, _ratio_metrics(sg(s), mask, clipped)

  return part


def cispo(ratio_max: float = 5.0, ratio_min: float = 0.0):
  """CISPO (MiniMax-M1, Chen et al. 2025, eq. 4): loss_t = -sg(clip(r_t, ratio_min, ratio_max)) A_t log pi(y_t).

  Every token keeps a gradient; the clipped weight only rescales it. Needs `batch.old_logp`.
  """
  validation.check_positive("ratio_max", ratio_max)
  validation.check_positive("ratio_min", ratio_min, allow_zero=True)
  if ratio_min >= ratio_max:
    raise ValueError(f"`ratio_min` ({ratio_min}) must be below `ratio_max` ({ratio_max}).")

  def part(logp, batch, adv, mask):
    r = reference.token_ratio(logp, _old_logp(batch, "cispo"), mask)
    w = reference.cispo_weight(r, ratio_max, ratio_min)
    clipped = ((sg(r) > ratio_max) | (sg(r) < ratio_min)).astype(r.dtype)
    return -w * sg(adv) * logp * mask, _ratio_metrics(sg(r), mask, clipped)

  return part
