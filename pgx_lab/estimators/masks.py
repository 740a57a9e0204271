"""Mask part: which tokens carry gradient. `mask(batch, adv) -> [B, T]` in {0, 1}.

The estimator always multiplies the part's mask by the response mask `batch.mask`, so a mask part
only has to say what it removes. Compose parts with `all_of`.
"""

import jax
import jax.numpy as jnp

Array = jax.Array


def response(batch, adv: Array) -> Array:
  """The response/padding mask `batch.mask` (prompt tokens and padding are 0)."""
  del adv
  return batch.mask.astype(jnp.float32)


def positive_advantage(batch, adv: Array) -> Array:
  """Keeps tokens whose advantage is > 0: A-LoL's positive subset (Baheti et al. 2024, sec. 2.2)."""
  return (adv > 0).astype(jnp.float32) * batch.mask.astype(jnp.float32)


def nonzero_advantage(batch, adv: Array) -> Array:
  """Drops tokens with zero advantage (zero-variance GRPO groups carry no signal; DAPO's filter)."""
  return (adv != 0).astype(jnp.float32) * batch.mask.astype(jnp.float32)


def all_of(*parts):
  """The product (logical and) of several mask parts."""
  if not parts:
    raise ValueError("`parts` of all_of must hold at least one mask part.")

  def mask(batch, adv):
    out = parts[0](batch, adv)
    for part in parts[1:]:
      out = out * part(batch, adv)
    return out

  return mask
