"""Action and observation spaces, and the check that names an invalid action."""

from typing import Any, NamedTuple, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np


class Discrete(NamedTuple):
  """Integers in [0, n)."""

  n: int
  shape: Tuple[int, ...] = ()

  def sample(self, key):
    return jax.random.randint(key, self.shape, 0, self.n, jnp.int32)


class Box(NamedTuple):
  """Floats in [low, high] of a given shape (bounds may be +-inf)."""

  low: Any
  high: Any
  shape: Tuple[int, ...]

  def sample(self, key):
    low = jnp.broadcast_to(jnp.asarray(self.low, jnp.float32), self.shape)
    high = jnp.broadcast_to(jnp.asarray(self.high, jnp.float32), self.shape)
    low, high = jnp.maximum(low, -1.0), jnp.minimum(high, 1.0)  # unbounded axes: [-1, 1]
    return jax.random.uniform(key, self.shape, minval=low, maxval=high)


Space = Union[Discrete, Box]


def check_in_space(name: str, x: Any, space: Space) -> None:
  """Raises ValueError naming `name` on a wrong shape or dtype; checks values when concrete."""
  if not hasattr(x, "shape"):
    x = np.asarray(x)
  if tuple(x.shape) != tuple(space.shape):
    raise ValueError(f"`{name}` must have shape {tuple(space.shape)}, got {tuple(x.shape)}.")
  concrete = not isinstance(x, jax.core.Tracer)
  if isinstance(space, Discrete):
    if not jnp.issubdtype(x.dtype, jnp.integer):
      raise ValueError(f"`{name}` must be an integer action in [0, {space.n}), got dtype {x.dtype}.")
    if concrete:
      v = np.asarray(x)
      if np.any(v < 0) or np.any(v >= space.n):
        raise ValueError(f"`{name}` {v.tolist()} is outside the action space [0, {space.n}).")
  else:
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"`{name}` must be a float action, got dtype {x.dtype}.")
    if concrete:
      v = np.asarray(x)
      if not np.all(np.isfinite(v)):
        raise ValueError(f"`{name}` must be finite, got {v.tolist()}.")
      if np.any(v < np.asarray(space.low)) or np.any(v > np.asarray(space.high)):
        raise ValueError(f"`{name}` {v.tolist()} is outside the box [{space.low}, {space.high}].")
