"""`TrainState`: everything a training run carries between update steps, as one pytree."""

from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Params, optimizer state, step, PRNG key and the state of any selection/optimizer transform.

  Attributes:
    step: int32 scalar, the number of update steps taken.
    params: the policy's (and critic's) parameters, a pytree.
    opt_state: the optax optimizer's state.
    key: the PRNG key the run draws from (split at each use).
    extra: state of stateful pieces outside the optimizer (selection samplers, curricula,
      second-order transforms), a pytree; `{}` when there is none.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  key: jax.Array
  extra: Any = flax.struct.field(default_factory=dict)

  @classmethod
  def create(cls, params: Any, optimizer: optax.GradientTransformation, key: jax.Array,
             extra: Optional[Any] = None) -> "TrainState":
    """A fresh state at step 0."""
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
               key=key, extra={} if extra is None else extra)
