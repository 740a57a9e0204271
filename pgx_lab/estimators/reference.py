"""Reference part: the importance weight pi_theta / pi_old, its clipping, and the surrogate.

Array functions return a per-token loss [B, T] (to be minimised); multiply by a mask and
aggregate with `aggregation`. Log-ratios are taken only where `mask` is 1 (so -inf log-probs at
padding never produce NaN) and clamped to [-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP] before `exp`
(as verl does), so finite input gives a finite ratio.
"""

from typing import Optional

import jax
import jax.numpy as jnp

Array = jax.Array
sg = jax.lax.stop_gradient

LOG_RATIO_CLAMP = 20.0


def token_log_ratio(logp: Array, old_logp: Array, mask: Array) -> Array:
  """log pi_theta(y_t) - log pi_old(y_t) where mask is 1, else 0; [B, T]."""
  lr = jnp.where(mask > 0, logp - old_logp, 0.0)
  return jnp.clip(lr, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def token_ratio(logp: Array, old_logp: Array, mask: Array) -> Array:
  """The token importance ratio r_t = pi_theta(y_t) / pi_old(y_t) (PPO, Schulman et al. 2017)."""
  return jnp.exp(token_log_ratio(logp, old_logp, mask))


def sequence_log_ratio(logp: Array, old_logp: Array, mask: Array) -> Array:
  """GSPO's length-normalised sequence log-ratio (Zheng et al. 2025, eq. 7), [B].

  log s_i = (1 / |y_i|) sum_t log (pi_theta(y_t) / pi_old(y_t)); an all-masked row gives 0.
  """
  lengths = jnp.maximum(jnp.sum(mask, axis=1), 1.0)
  return jnp.sum(token_log_ratio(logp, old_logp, mask) * mask, axis=1) / lengths


def gspo_token_ratio(logp: Array, old_logp: Array, mask: Array) -> Array:
  """GSPO-token's ratio (Zheng et al. 2025, eq. 13): s_{i,t} = sg(s_i) * pi_theta(y_t) / sg(pi_theta(y_t)).

  Its value equals the sequence ratio s_i at every token; its gradient is s_i * grad log pi(y_t),
  so a per-token advantage reaches each token. [B, T].
  """
  s = jnp.exp(sequence_log_ratio(logp, old_logp, mask))
  lp = jnp.where(mask > 0, logp, 0.0)
  return sg(s)[:, None] * jnp.exp(lp - sg(lp))


def clipped_surrogate_loss(
    ratio: Array,
    adv: Array,
    eps_low: float = 0.2,
    eps_high: Optional[float] = None,
    *,
    dual_clip: Optional[float] = None,
    ratio_cap: Optional[float] = None,
) -> Array:
  """The PPO clipped surrogate as a loss, per token or per sequence (same shape as `ratio`).

  loss = -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)   (Schulman et al. 2017, eq. 7),
  with DAPO's decoupled clip range (Yu et al. 2025, eq. 10: eps_low = 0.2, eps_high = 0.28);
  `dual_clip = c > 1` bounds the loss of negative advantages by -c A (Ye et al. 2020, "Mastering
  complex control in MOBA games", eq. 5); `ratio_cap = delta` caps the unclipped ratio r at delta,
  the two-sided clip of INTELLECT-2 (Prime Intellect 2025), so a negative advantage cannot
  push an exploding ratio without bound. With r = 1 the gradient is -A grad log pi (REINFORCE's).

  Args:
    ratio: importance ratios r, any shape.
    adv: advantages, broadcastable to `ratio` (treated as constants).
    eps_low: lower clip, r >= 1 - eps_low.
    eps_high: upper clip, r <= 1 + eps_high; None uses eps_low.
    dual_clip: c for the dual clip, or None.
    ratio_cap: delta for the two-sided cap, or None.

  Returns:
    The per-element loss, same shape as `ratio`.
  """
  eps_high = eps_low if eps_high is None else eps_high
  adv = sg(adv)
  r = ratio if ratio_cap is None else jnp.minimum(ratio, ratio_cap)
  clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
  loss = jnp.maximum(-r * adv, -clipped * adv)
  if dual_clip is not None:
    loss = jnp.where(adv < 0, jnp.minimum(loss, -dual_clip * adv), loss)
  return loss


def clip_fraction(ratio: Array, adv: Array, eps_low: float, eps_high: Optional[float]) -> Array:
  """Where clipping removes the gradient: r > 1 + eps_high with A > 0, or r < 1 - eps_low with A < 0.

  Returns a 0/1 array of `ratio`'s shape (average it under the mask for the metric). Tokens
  stopped by the dual clip or the ratio cap are not counted (verl reports those separately).
  """
  eps_high = eps_low if eps_high is None else eps_high
  hi = (ratio > 1.0 + eps_high) & (adv > 0)
  lo = (ratio < 1.0 - eps_low) & (adv < 0)
  return (hi | lo).astype(ratio.dtype)


def cispo_weight(ratio: Array, ratio_max: float = 5.0, ratio_min: float = 0.0) -> Array:
  """CISPO's clipped, stop-gradient importance weight (MiniMax-M1, Chen et al. 2025, eq. 4-5).

  w = sg(clip(r, ratio_min, ratio_max)); the loss -w A log pi keeps a gradient on every token, even
  clipped ones. The paper imposes no lower bound (ratio_min = 0) and tunes only the upper bound,
  given here directly as `ratio_max` (the 1 + eps_high of the paper).
  """
  return sg(jnp.clip(ratio, ratio_min, ratio_max))
