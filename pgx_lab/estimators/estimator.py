"""`Estimator`: four parts composed into `loss(logp, batch) -> (loss, metrics)`.

Following the Unified Policy Gradient Estimator (Lv et al. 2025, "Towards a unified view of large
language model post-training", eq. 5), every score-function gradient here is

    grad = E[ mask * (pi_theta / pi_ref) * A_hat * grad log pi_theta ]

and an estimator is the choice of four parts:
  advantage:  `advantage(batch) -> [B] or [B, T]`       (advantage_parts)
  reference:  `reference(logp, batch, adv, mask) -> (per_token_loss [B, T], metrics)` (reference_parts)
  mask:       `mask(batch, adv) -> [B, T]`              (masks; always times `batch.mask`)
  aggregate:  `aggregate(x, mask, normalizer) -> scalar` (aggregation)
plus penalties `penalty(logp, batch, mask, entropy) -> (per_token [B, T], metrics)` added to the
per-token loss before aggregation (penalties).
"""

import dataclasses
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp

from pgx_lab import types
from pgx_lab import validation
from pgx_lab.estimators import aggregation
from pgx_lab.estimators import masks
from pgx_lab.estimators import penalties as penalties_lib
from pgx_lab.estimators import reference
from pgx_lab.estimators import reference_parts

Array = jax.Array
sg = jax.lax.stop_gradient

_TOKEN_FIELDS = ("old_logp", "ref_logp", "discounts")


def check_sequence_batch(logp: Array, batch: types.SequenceBatch, entropy: Optional[Array] = None):
  """Validates `logp` and every given field of `batch` against each other; raises ValueError."""
  validation.check_array("logp", logp, ndim=2)
  validation.check_array("batch.mask", batch.mask, ndim=2, kind="number")
  validation.check_shape("batch.mask", batch.mask, logp.shape, against="logp")
  b, t = logp.shape
  for name in _TOKEN_FIELDS:
    x = getattr(batch, name)
    if x is not None:
      validation.check_array(f"batch.{name}", x, ndim=2)
      validation.check_shape(f"batch.{name}", x, (b, t), against="logp")
  if batch.rewards is not None:
    validation.check_array("batch.rewards", batch.rewards, ndim=(1, 2), kind="number")
    validation.check_shape("batch.rewards", batch.rewards, (b, t)[: batch.rewards.ndim],
                           against="logp")
  if batch.advantages is not None:
    validation.check_array("batch.advantages", batch.advantages, ndim=(1, 2))
    validation.check_shape("batch.advantages", batch.advantages, (b, t)[: batch.advantages.ndim],
                           against="logp")
  if batch.group_ids is not None:
    validation.check_array("batch.group_ids", batch.group_ids, ndim=1, kind="int")
    validation.check_shape("batch.group_ids", batch.group_ids, (b,), against="logp rows")
  if batch.values is not None:
    validation.check_array("batch.values", batch.values, ndim=2)
    validation.check_shape("batch.values", batch.values, (b, t + 1))
  if entropy is not None:
    validation.check_array("entropy", entropy, ndim=2)
    validation.check_shape("entropy", entropy, (b, t), against="logp")


def _masked_stats(prefix: str, x: Array, mask: Array):
  n = jnp.maximum(jnp.sum(mask), 1.0)
  mean = jnp.sum(x * mask) / n
  std = jnp.sqrt(jnp.sum(((x - mean) * mask) ** 2) / n)
  any_valid = jnp.sum(mask) > 0
  hi = jnp.where(any_valid, jnp.max(jnp.where(mask > 0, x, -jnp.inf)), 0.0)
  lo = jnp.where(any_valid, jnp.min(jnp.where(mask > 0, x, jnp.inf)), 0.0)
  return {f"{prefix}_mean": sg(mean), f"{prefix}_std": sg(std), f"{prefix}_max": sg(hi),
          f"{prefix}_min": sg(lo)}


@dataclasses.dataclass(frozen=True)
class Estimator:
  """A score-function estimator made of four parts and penalties.

  Call it as `loss, metrics = est(logp, batch, entropy=None)` with `logp[B, T]` the
  differentiable log-probs of the taken tokens, `batch` a `SequenceBatch`, and `entropy[B, T]`
  the differentiable per-token entropy when an entropy bonus or entropy metric is wanted.
  Log-probs at masked positions are ignored (they may be -inf).

  Metrics: the reference part's (ratio mean and max, clip fraction), `approx_kl` (k3 estimate of
  KL(pi_old || pi_theta) over the mask, when `batch.old_logp` is given), advantage statistics
  (over sequences with a response for a sequence advantage, over response tokens otherwise),
  `entropy` (when given), `mask_fraction` (the share of response tokens that carry gradient)
  and each penalty's.
  """

  advantage: Callable
  reference: Callable = dataclasses.field(default_factory=reference_parts.on_policy)
  mask: Callable = masks.response
  aggregate: Callable = aggregation.token_mean
  penalties: Tuple[Callable, ...] = ()
  name: str = "custom"

  def replace(self, **parts) -> "Estimator":
    """A copy with some parts swapped, e.g. `grpo.replace(aggregate=agg.token_sum_norm)`."""
    return dataclasses.replace(self, **parts)

  def __call__(self, logp: Array, batch: types.SequenceBatch, *,
               entropy: Optional[Array] = None) -> Tuple[Array, types.Metrics]:
    check_sequence_batch(logp, batch, entropy)
    response = batch.mask.astype(logp.dtype)
    valid = response > 0
    logp = jnp.where(valid, logp, 0.0)
    clean = {n: jnp.where(valid, getattr(batch, n), 0.0)
             for n in ("old_logp", "ref_logp") if getattr(batch, n) is not None}
    batch = batch.replace(**clean)
    if entropy is not None:
      entropy = jnp.where(valid, entropy, 0.0)

    adv = sg(self.advantage(batch)).astype(logp.dtype)
    if adv.ndim == 1:
      validation.check_shape("advantage", adv, logp.shape[:1], against="logp rows")
      rows = (jnp.sum(response, axis=1) > 0).astype(logp.dtype)
      adv_metrics = _masked_stats("advantage", adv, rows)
      adv = jnp.broadcast_to(adv[:, None], logp.shape) * response
    else:
      validation.check_shape("advantage", adv, logp.shape, against="logp")
      adv = adv * response
      adv_metrics = _masked_stats("advantage", adv, response)
    mask = response if self.mask is masks.response else response * self.mask(batch, adv)

    per_token, metrics = self.reference(logp, batch, adv, mask)
    metrics = dict(metrics)
    for penalty in self.penalties:
      term, pm = penalty(logp, batch, mask, entropy)
      per_token = per_token + term
      metrics.update(pm)
    loss = self.aggregate(per_token, mask, batch.loss_normalizer)

    metrics.update(adv_metrics)
    metrics["mask_fraction"] = sg(jnp.sum(mask) / jnp.maximum(jnp.sum(response), 1.0))
    if batch.old_logp is not None:
      log_r = reference.token_log_ratio(sg(logp), batch.old_logp, mask)
      k3 = jnp.exp(log_r) - 1.0 - log_r
      metrics["approx_kl"] = jnp.sum(k3 * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    if entropy is not None:
      metrics["entropy"] = sg(jnp.sum(entropy * response)
                              / jnp.maximum(jnp.sum(response), 1.0))
    return loss, metrics


def penalties_for(kl_beta: float = 0.0, kl_estimator: str = "k3", entropy_coef: float = 0.0):
  """The usual penalty tuple: a KL term when kl_beta > 0, an entropy bonus when entropy_coef > 0."""
  validation.check_option("kl_estimator", kl_estimator, penalties_lib.KL_ESTIMATORS)
  validation.check_positive("kl_beta", kl_beta, allow_zero=True)
  validation.check_positive("entropy_coef", entropy_coef, allow_zero=True)
  out = []
  if kl_beta:
    out.append(penalties_lib.kl_penalty(kl_beta, kl_estimator))
  if entropy_coef:
    out.append(penalties_lib.entropy_bonus(entropy_coef))
  return tuple(out)
