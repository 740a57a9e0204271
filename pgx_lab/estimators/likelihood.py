"""Likelihood part: what log pi_theta is. Token log-probs and entropies from logits.

Models produce logits; estimators take the gathered log-probs `logp[B, T]` of the taken tokens.
"""

import jax
import jax.numpy as jnp

from pgx_lab import validation

Array = jax.Array


def token_logp(logits: Array, actions: Array) -> Array:
  """log pi(a) of the taken actions: logits [..., V] and int actions [...] -> [...]."""
  validation.check_array("logits", logits, kind="float")
  validation.check_array("actions", actions, kind="int")
  if actions.shape != logits.shape[:-1]:
    raise ValueError(f"`actions` must have shape {logits.shape[:-1]} (logits without the last "
                     f"axis), got {actions.shape}.")
  logp = jax.nn.log_softmax(logits, axis=-1)
  return jnp.take_along_axis(logp, actions[..., None], axis=-1)[..., 0]


def categorical_entropy(logits: Array) -> Array:
  """Entropy of softmax(logits) over the last axis, -sum_a pi(a) log pi(a).

  Finite for logits containing -inf (disallowed actions): 0 * -inf is taken as 0.
  """
  validation.check_array("logits", logits, kind="float")
  logp = jax.nn.log_softmax(logits, axis=-1)
  p = jnp.exp(logp)
  return -jnp.sum(jnp.where(p > 0, p * jnp.where(p > 0, logp, 0.0), 0.0), axis=-1)


def sequence_logp(logp: Array, mask: Array, *, length_normalize: bool = False) -> Array:
  """S_i = sum_t m log pi(y_t), or its mean over the response tokens; [B, T] -> [B].

  Masked positions are zeroed with `where`, so -inf log-probs under padding give a finite sum.
  """
  s = jnp.sum(jnp.where(mask > 0, logp, 0.0) * mask, axis=-1)
  if length_normalize:
    s = s / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)
  return s
