"""A-LoL's data side: the positive-advantage subset and priority sampling.

Baheti et al., ICLR 2024, "Leftover Lunch: Advantage-based Offline Reinforcement Learning for
Language Models": the advantage A_i = R(x_i, y_i) - V_ref(x_i) of every training point is
computed once; points with A_i <= 0 are dropped (the "leftover lunch" is the rest), and the rest
are sampled with replacement with probability proportional to A_i (priority sampling). The
authors' code (abaheti95/LoL-RL, `lolrl_qlora_llama_hh.py`, `sampling_strategy`) has three options:
  "priority"          ("good_priority") p_i proportional to max(A_i, 0) over the preferred points;
  "uniform_positive"  ("good_random")   p_i uniform over the preferred points with A_i > 0;
  "all_priority"      ("all_priority")  p_i proportional to max(A_i, 0) over all points, the
                                         dispreferred responses of a preference set included.
`preferred` [N] marks the "good" responses of a preference dataset; without it every point counts
as preferred and "priority" equals "all_priority". The code also scales the number of training
steps by the kept fraction (`kept_fraction` here).
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from pgx_lab import validation

Array = jax.Array
OPTIONS = ("priority", "uniform_positive", "all_priority")


class Priority(NamedTuple):
  """Sampling probabilities over the N training points and what was dropped.

  Attributes:
    probs: [N] float32 sampling probabilities (0 for dropped points; sum 1 unless nothing is kept).
    kept: [N] bool, the points that can be drawn (probs > 0).
    kept_fraction: scalar, kept.sum() / N (the code's `positive_ratio`, its step scale).
    dropped_fraction: scalar, 1 - kept_fraction.
  """

  probs: Array
  kept: Array
  kept_fraction: Array
  dropped_fraction: Array


def positive_subset(advantages: Array) -> Array:
  """[N] bool, A_i > 0: the points A-LoL keeps. (Baheti et al. 2024) `advantages`: [N] float."""
  validation.check_array("advantages", advantages, ndim=1)
  return advantages > 0


def priority(advantages: Array, option: str = "priority",
             preferred: Optional[Array] = None) -> Priority:
  """A-LoL's sampling probabilities from the advantages of all N training points.

  Args:
    advantages: [N] float, A_i = R_i - V_ref(x_i).
    option: "priority" (default), "uniform_positive" or "all_priority" (module docstring).
    preferred: optional [N] bool (or 0/1), the preferred ("good") responses; None = all.

  Returns:
    A `Priority`. With no positive advantage among the eligible points nothing can be sampled:
    outside jit this raises ValueError (naming `advantages`); under jit (values unknown) it
    returns all-zero `probs`, `dropped_fraction` 1, and `sample` then returns -1 for every draw.

  Raises:
    ValueError: bad rank/dtype, an unknown `option`, a `preferred` of another shape, or (outside
      jit) no eligible point with a positive advantage.
  """
  validation.check_array("advantages", advantages, ndim=1)
  validation.check_option("option", option, OPTIONS)
  n = advantages.shape[0]
  if n == 0:
    raise ValueError("`advantages` must hold at least one point, got shape (0,).")
  eligible = jnp.ones((n,), bool)
  if preferred is not None:
    validation.check_array("preferred", preferred, ndim=1, kind="number")
    validation.check_shape("preferred", preferred, (n,), against="advantages")
    if option != "all_priority":
      eligible = jnp.asarray(preferred) > 0
  pos = jnp.where(eligible, jnp.maximum(advantages, 0.0), 0.0)
  weights = jnp.where(pos > 0, 1.0, 0.0) if option == "uniform_positive" else pos
  total = jnp.sum(weights)
  if not isinstance(total, jax.core.Tracer) and not float(np.asarray(total)) > 0:
    raise ValueError("`advantages` has no positive entry among the eligible points "
                     f"(option={option!r}): A-LoL's positive subset is empty, nothing to sample.")
  probs = jnp.where(total > 0, weights / jnp.where(total > 0, total, 1.0), 0.0)
  kept = probs > 0
  kept_fraction = jnp.mean(kept.astype(jnp.float32))
  return Priority(probs.astype(jnp.float32), kept, kept_fraction, 1.0 - kept_fraction)


def sample(key: Array, probs: Array, batch_size: int) -> Array:
  """Draws `batch_size` indices i.i.d. with replacement from `probs` (inverse CDF, as the code's
  `numba_choice` on cumulative weights). Jittable with `batch_size` static.

  Args:
    key: PRNG key.
    probs: [N] non-negative float weights (need not sum to 1, e.g. `Priority.probs`).
    batch_size: number of draws, a positive Python int.

  Returns:
    [batch_size] int32 indices; a point with zero weight is never drawn. If every weight is 0 the
    result is -1 everywhere (the documented empty result of `priority` under jit).
  """
  validation.check_array("probs", probs, ndim=1)
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
  w = jnp.maximum(probs, 0.0)
  cdf = jnp.cumsum(w)
  total = cdf[-1]
  u = jax.random.uniform(key, (batch_size,)) * total
  idx = jnp.searchsorted(cdf, u, side="right")
  # Rounding can put u at the top of the cdf: map it to the last point with weight > 0.
  last = w.shape[0] - 1 - jnp.argmax((w > 0)[::-1])
  idx = jnp.minimum(idx, last)
  return jnp.where(total > 0, idx, -1).astype(jnp.int32)
