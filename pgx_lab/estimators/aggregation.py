"""Aggregation: a per-token loss [B, T] and a mask [B, T] in, a scalar out.

Each function takes an optional `normalizer`: the global count its denominator stands for (tokens
for `token_mean`, sequences for the sequence means, the constant for `token_sum_norm`). Pass it
when a batch is one micro-batch of a larger one, and sum the micro-batch losses: the result then
equals the loss of the whole batch (DAPO's normaliser counts the tokens of the whole generation
batch). Without it the local count is used. Empty denominators are clamped to 1, so an all-masked
batch gives 0, not NaN.
"""

from typing import Optional

import jax
import jax.numpy as jnp

Array = jax.Array


def _den(local: Array, normalizer: Optional[Array]) -> Array:
  den = local if normalizer is None else jnp.asarray(normalizer, local.dtype)
  return jnp.maximum(den, 1.0)


def token_mean(x: Array, mask: Array, normalizer: Optional[Array] = None) -> Array:
  """sum_{i,t} m x / sum_{i,t} m: every token weighs the same (DAPO, Yu et al. 2025, eq. 8)."""
  m = mask.astype(x.dtype)
  return jnp.sum(x * m) / _den(jnp.sum(m), normalizer)


def seq_mean_token_mean(x: Array, mask: Array, normalizer: Optional[Array] = None) -> Array:
  """mean_i (1/|y_i|) sum_t m x: the original GRPO aggregation (Shao et al. 2024, eq. 3)."""
  m = mask.astype(x.dtype)
  per_seq = jnp.sum(x * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
  return jnp.sum(per_seq) / _den(jnp.asarray(x.shape[0], x.dtype), normalizer)


def seq_mean_token_sum(x: Array, mask: Array, normalizer: Optional[Array] = None) -> Array:
  """mean_i sum_t m x: the sequence log-likelihood weighting of REINFORCE (Williams 1992)."""
  m = mask.astype(x.dtype)
  return jnp.sum(x * m) / _den(jnp.asarray(x.shape[0], x.dtype), normalizer)


def token_sum_norm(x: Array, mask: Array, normalizer: Optional[Array] = None) -> Array:
  """sum_{i,t} m x / (B * T_max): Dr.GRPO's constant normaliser (Liu et al. 2025, eq. 3).

  The default constant is the padded size B * T of this batch; pass `normalizer` (e.g. number of
  sequences times the generation budget MAX_TOKENS) to use the paper's constant.
  """
  m = mask.astype(x.dtype)
  return jnp.sum(x * m) / _den(jnp.asarray(x.shape[0] * x.shape[1], x.dtype), normalizer)


AGGREGATIONS = {
    "token_mean": token_mean,
    "seq_mean_token_mean": seq_mean_token_mean,
    "seq_mean_token_sum": seq_mean_token_sum,
    "token_sum_norm": token_sum_norm,
}
