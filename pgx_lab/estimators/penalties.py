"""Penalties: per-token terms added to the loss before aggregation (KL to a reference, entropy).

The KL estimators are Schulman's (2020, "Approximating KL divergence") for
KL(pi_theta || pi_ref) from samples of pi_theta, with log-ratio d = log pi_ref - log pi_theta:
  k1 = -d                      (unbiased, high variance, can be negative)
  k2 = d^2 / 2                 (biased, low variance)
  k3 = exp(d) - d - 1          (unbiased, non-negative; GRPO's, Shao et al. 2024, eq. 4)
"""

from typing import Optional

import jax
import jax.numpy as jnp

from pgx_lab import validation

Array = jax.Array

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logp: Array, ref_logp: Array, mask: Array, estimator: str = "k3") -> Array:
  """Per-token estimate of KL(pi_theta || pi_ref), 0 where mask is 0; [B, T].

  The log-ratio is clamped to [-20, 20] before `exp` so finite input stays finite.
  """
  validation.check_option("kl_estimator", estimator, KL_ESTIMATORS)
  d = jnp.where(mask > 0, ref_logp - logp, 0.0)
  d = jnp.clip(d, -20.0, 20.0)
  if estimator == "k1":
    k = -d
  elif estimator == "k2":
    k = 0.5 * d**2
  else:
    k = jnp.exp(d) - d - 1.0
  return k * mask


def kl_penalty(beta: float, estimator: str = "k3"):
  """A penalty part: beta * k(logp, ref_logp) per token, the KL loss term of GRPO (eq. 3).

  Needs `batch.ref_logp`. Returns `penalty(logp, batch, mask, entropy) -> (per_token, metrics)`.
  """
  validation.check_option("kl_estimator", estimator, KL_ESTIMATORS)
  validation.check_positive("beta", beta, allow_zero=True)

  def penalty(logp, batch, mask, entropy: Optional[Array] = None):
    del entropy
    ref = validation.require("batch.ref_logp", batch.ref_logp, f"kl_penalty({estimator})")
    k = kl_estimate(logp, ref, mask, estimator)
    n = jnp.maximum(jnp.sum(mask), 1.0)
    return beta * k, {f"kl_ref_{estimator}": jax.lax.stop_gradient(jnp.sum(k) / n)}

  return penalty


def entropy_bonus(coef: float):
  """A penalty part: -coef * H_t, the entropy bonus of A3C/PPO (Mnih et al. 2016; Schulman et al. 2017, eq. 9).

  Needs the differentiable per-token entropy [B, T] passed to the estimator as `entropy=`.
  """
  validation.check_positive("coef", coef, allow_zero=True)

  def penalty(logp, batch, mask, entropy: Optional[Array] = None):
    del logp, batch
    ent = validation.require("entropy", entropy, "entropy_bonus")
    return -coef * ent * mask, {}

  return penalty
