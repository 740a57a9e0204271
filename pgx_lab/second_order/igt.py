"""N-PG-IGT: normalised policy gradient with implicit gradient transport, as an optax transform.

Fatkhullin, Barakat, Kireeva, He, "Stochastic policy gradient methods: improved sample complexity
for Fisher-non-degenerate policies" (ICML 2023, Alg. 1), after Cutkosky & Mehta (2020, NIGT). In
optax's sign convention (incoming gradients are of a loss to MINIMISE, e.g. -GPOMDP for J):

    eta_t   = momentum schedule,  gamma_t = step-size schedule          (t = 0 at the first update)
    theta~_t = theta_t + ((1 - eta_t) / eta_t) (theta_t - theta_{t-1})   (theta_{-1} = theta_0)
    d_t     = (1 - eta_t) d_{t-1} + eta_t grad(theta~_t)                 (eta_0 = 1: d_0 = grad)
    theta_{t+1} = theta_t - gamma_t d_t / max(||d_t||, eps)   (normalised; global 2-norm)
               or theta_t - gamma_t d_t                          (normalize=False)

Schedules (the authors' code, `NIGT_optimizer.py` update_eta / update_gamma, confirmed by reading
it): eta_t = eta_0 (2/(t+2))^{4/5}, gamma_t = gamma_0 * 2/(t+2), the same gamma_t for the
unnormalised variant. Reading implemented for the extrapolation index: the paper's form with the
current eta_t. (The code moves to b theta_t + (1-b) theta_{t-1} with b = 1/eta of the PREVIOUS
update, i.e. lagging one index; both agree to first order for a slowly varying eta_t.)

The gradient must be sampled at the extrapolated point theta~_t, which depends on the state. Two
ways to supply it, both jittable and usable inside `optax.chain` (extra arguments reach every
transform of a chain):
  * `update(None, state, params, grad_fn=f)`: the transform calls f(theta~_t) -> grad pytree
    (f samples its trajectory there; close over a PRNG key);
  * `update(g, state, params)` with g computed by the caller at `query_point(state, params)`.
"""

from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from pgx_lab.second_order import hvp as hvp_lib

PyTree = Any
ScalarOrSchedule = Union[float, Callable[[jax.Array], jax.Array]]


class IGTState(NamedTuple):
  """count: int32 updates done (t); d: momentum pytree like params; prev_params: theta_{t-1}
  (equal to params before the first update)."""

  count: jax.Array
  d: PyTree
  prev_params: PyTree


def igt_momentum(count: jax.Array, eta_0: float = 1.0) -> jax.Array:
  """eta_t = eta_0 (2 / (t + 2))^{4/5} (authors' code, NIGT update_eta); count = t >= 0 int."""
  return eta_0 * (2.0 / (count.astype(jnp.float32) + 2.0)) ** 0.8


def decaying_step(count: jax.Array, gamma_0: float, power: float = 1.0) -> jax.Array:
  """gamma_t = gamma_0 (2 / (t + 2))^power: power 1 for N-PG-IGT, N-HARPG; 1/2 for HARPG."""
  return gamma_0 * (2.0 / (count.astype(jnp.float32) + 2.0)) ** power


def _as_schedule(name: str, value: ScalarOrSchedule, default: Callable) -> Callable:
  """A float scales the paper schedule `default(count, value)`; a callable is used as given."""
  if callable(value):
    return value
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
    raise ValueError(f"`{name}` must be a positive float or a schedule (count -> value), got "
                     f"{value!r}.")
  return lambda count: default(count, float(value))


def _check_eps(eps) -> None:
  if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
    raise ValueError(f"`eps` must be a positive float, got {eps!r}.")


def extrapolate(params: PyTree, prev_params: PyTree, eta: jax.Array) -> PyTree:
  """theta + ((1 - eta) / eta) (theta - theta_prev), leaf by leaf (eta a scalar in (0, 1])."""
  c = (1.0 - eta) / eta
  return jax.tree.map(lambda p, q: p + (c * (p - q)).astype(p.dtype), params, prev_params)


def query_point(state: IGTState, params: PyTree, momentum: ScalarOrSchedule = 1.0) -> PyTree:
  """theta~_t, where the next gradient must be sampled. `momentum` must be the one given to
  `npg_igt` (a float eta_0 or a schedule). params: theta_t, a pytree."""
  eta = _as_schedule("momentum", momentum, igt_momentum)(state.count)
  return extrapolate(params, state.prev_params, eta)


def normalized_step(d: PyTree, step: jax.Array, normalize: bool, eps: float) -> PyTree:
  """-step d / max(||d||, eps) (global 2-norm over all leaves) or -step d."""
  scale = step / jnp.maximum(hvp_lib.tree_norm(d), eps) if normalize else step
  return jax.tree.map(lambda x: (-scale * x).astype(x.dtype), d)


def npg_igt(learning_rate: ScalarOrSchedule = 0.1, momentum: ScalarOrSchedule = 1.0,
            normalize: bool = True, eps: float = 1e-12) -> optax.GradientTransformationExtraArgs:
  """N-PG-IGT (module docstring) as an optax transformation.

  Args:
    learning_rate: gamma_0 of gamma_t = gamma_0 * 2/(t+2), or a schedule count -> gamma_t.
    momentum: eta_0 of eta_t = eta_0 (2/(t+2))^{4/5}, or a schedule count -> eta_t in (0, 1].
    normalize: True for N-PG-IGT's normalised step, False for the plain momentum step.
    eps: floor of ||d|| in the normalisation.
  Returns:
    GradientTransformationExtraArgs; `update(updates, state, params, grad_fn=None)` needs params.
  """
  step_fn = _as_schedule("learning_rate", learning_rate, decaying_step)
  eta_fn = _as_schedule("momentum", momentum, igt_momentum)
  _check_eps(eps)

  def init(params):
    hvp_lib._check_params(params)  # pylint: disable=protected-access
    zeros = jax.tree.map(jnp.zeros_like, params)
    return IGTState(jnp.zeros((), jnp.int32), zeros, jax.tree.map(jnp.asarray, params))

  def update(updates, state, params=None, *, grad_fn: Optional[Callable] = None, **extra):
    del extra
    if params is None:
      raise ValueError("`params` is required by npg_igt (theta_t and the extrapolated point).")
    eta = eta_fn(state.count)
    if grad_fn is not None:
      updates = grad_fn(extrapolate(params, state.prev_params, eta))
    if updates is None:
      raise ValueError("`updates` must be the gradient at query_point(state, params) when no "
                       "`grad_fn` is given.")
    hvp_lib.check_like("updates", updates, params)
    d = jax.tree.map(lambda m, g: ((1.0 - eta) * m + eta * g).astype(m.dtype), state.d, updates)
    out = normalized_step(d, step_fn(state.count), normalize, eps)
    new_state = IGTState(state.count + 1, d, jax.tree.map(jnp.asarray, params))
    return out, new_state

  return optax.GradientTransformationExtraArgs(init, update)
