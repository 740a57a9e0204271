"""The critic's loss of PPO-style learners: squared error, optionally clipped around the old values.

Schulman et al. (2017) state the combined objective L^{CLIP+VF+S} (eq. 9) with a squared-error
value term; the clipped form below is the one of OpenAI's baselines `ppo2`, PureJaxRL and TRL's
`PPOTrainer`:

  L_V = 0.5 * mean max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)

with R the value targets (returns, e.g. GAE advantages + V_old). `clip=None` gives the plain
0.5 * mean (V - R)^2. The mean is over the entries where `mask` is 1 (all entries if no mask);
an all-masked batch gives 0, not NaN.
"""

from typing import Optional

import jax
import jax.numpy as jnp

from pgx_lab import validation

Array = jax.Array


def clipped_value_loss(values: Array, old_values: Array, returns: Array,
                       mask: Optional[Array] = None, clip: Optional[float] = 0.2) -> Array:
  """PPO's (clipped) value loss, a scalar.

  Args:
    values: V_theta at the visited states, any shape [...] (e.g. [B] or [B, T]).
    old_values: V_old, the values at rollout time, same shape.
    returns: the regression targets R, same shape.
    mask: optional 0/1 weights, same shape; the mean is over mask = 1.
    clip: the clip range c around V_old, or None for the unclipped loss.
  """
  validation.check_array("values", values, kind="float")
  for name, x in (("old_values", old_values), ("returns", returns), ("mask", mask)):
    if x is not None:
      validation.check_array(name, x, kind="number")
      validation.check_shape(name, x, values.shape, against="values")
  if clip is not None and not clip > 0:
    raise ValueError(f"`clip` must be None or > 0, got {clip!r}.")
  err = jnp.square(values - returns)
  if clip is not None:
    v_clipped = old_values + jnp.clip(values - old_values, -clip, clip)
    err = jnp.maximum(err, jnp.square(v_clipped - returns))
  if mask is None:
    return 0.5 * jnp.mean(err)
  mask = mask.astype(err.dtype)
  return 0.5 * jnp.sum(err * mask) / jnp.maximum(jnp.sum(mask), 1.0)
