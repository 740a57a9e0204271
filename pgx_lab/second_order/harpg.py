"""(N)-HARPG: Hessian-aided recursive policy gradient, as an optax transform.

Fatkhullin, Barakat, Kireeva, He, "Stochastic policy gradient methods: improved sample complexity
for Fisher-non-degenerate policies" (ICML 2023, Alg. 2; structure as in the authors' code,
`STORMHess_optimizer.py` step). In optax's sign convention (incoming gradients are of a loss to
MINIMISE, e.g. -GPOMDP for J; the Hessian oracle is of the same loss):

    t = 0:  d_0 = grad(tau_0, theta_0)                           (no Hessian sample)
    t >= 1: q_t ~ U[0, 1] (one scalar), theta^_t = q_t theta_t + (1 - q_t) theta_{t-1}
            v_t = B(tau^_t, theta^_t) (theta_t - theta_{t-1})   (tau^_t: a FRESH sample at theta^_t)
            d_t = (1 - eta_t) (d_{t-1} + v_t) + eta_t grad(tau_t, theta_t)
    step:   theta_{t+1} = theta_t - gamma_t d_t / max(||d_t||, eps)   (N-HARPG, normalize=True)
            theta_{t+1} = theta_t - gamma_t d_t                        (HARPG)

E_q[hess J(theta^_t)](theta_t - theta_{t-1}) = grad J(theta_t) - grad J(theta_{t-1}), so d_t is a
STORM-type recursive estimate without importance weights. Schedules (authors' code,
`update_eta` / `update_gamma`, confirmed by reading it; t = 0 at the first update):
eta_t = eta_0 * 2/(t+2); gamma_t = gamma_0 * 2/(t+2) (normalised) or gamma_0 (2/(t+2))^{1/2}
(unnormalised). The authors' defaults are gamma_0 = 0.1, eta_0 = 1.

Usage: `update(g, state, params, hvp_fn=f)` where g is the loss gradient at params (= theta_t) and
`f(point, v) -> pytree` is an unbiased estimate of hess L(point) v: it samples its own trajectory at
`point` (close over a PRNG key) and may use `score_hessian.score_hessian_vp` (negated, for L = -J).
The interpolation scalar q_t is drawn from the PRNG key in the state, or given as the extra
argument `interpolation` (a float in [0, 1]; used by tests with fixed random numbers). Works
under jit and vmap and inside `optax.chain` (extra arguments reach every transform of a chain).
"""

from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from pgx_lab.second_order import hvp as hvp_lib
from pgx_lab.second_order import igt

PyTree = Any


class HARPGState(NamedTuple):
  """count: int32 updates done (t); d: recursive estimate like params; prev_params: theta_{t-1};
  key: PRNG key for q_t (replace it, e.g. `state._replace(key=k)`, to vary it across seeds)."""

  count: jax.Array
  d: PyTree
  prev_params: PyTree
  key: jax.Array


def harpg_momentum(count: jax.Array, eta_0: float = 1.0) -> jax.Array:
  """eta_t = eta_0 * 2 / (t + 2) (authors' code, STORMHess update_eta); count = t >= 0 int."""
  return eta_0 * 2.0 / (count.astype(jnp.float32) + 2.0)


def interpolate(params: PyTree, prev_params: PyTree, q: jax.Array) -> PyTree:
  """q theta + (1 - q) theta_prev, leaf by leaf (q a scalar)."""
  return jax.tree.map(lambda p, r: (q * p + (1.0 - q) * r).astype(p.dtype), params, prev_params)


def harpg(learning_rate: igt.ScalarOrSchedule = 0.1, momentum: igt.ScalarOrSchedule = 1.0,
          normalize: bool = True, key: Union[int, jax.Array] = 0,
          eps: float = 1e-12) -> optax.GradientTransformationExtraArgs:
  """(N)-HARPG (module docstring) as an optax transformation.

  Args:
    learning_rate: gamma_0 of the paper schedule (2/(t+2) normalised, (2/(t+2))^{1/2} not), or a
      schedule count -> gamma_t.
    momentum: eta_0 of eta_t = eta_0 * 2/(t+2), or a schedule count -> eta_t in [0, 1].
    normalize: True for N-HARPG, False for HARPG.
    key: int seed or PRNG key of the interpolation draws (stored in the state).
    eps: floor of ||d|| in the normalisation.
  Returns:
    GradientTransformationExtraArgs; `update(updates, state, params, hvp_fn, interpolation=None)`.
  """
  power = 1.0 if normalize else 0.5
  step_fn = igt._as_schedule("learning_rate", learning_rate,  # pylint: disable=protected-access
                             lambda c, g0: igt.decaying_step(c, g0, power))
  eta_fn = igt._as_schedule(  # pylint: disable=protected-access
      "momentum", momentum, harpg_momentum)
  igt._check_eps(eps)  # pylint: disable=protected-access
  if isinstance(key, bool) or not (isinstance(key, int) or hasattr(key, "dtype")):
    raise ValueError(f"`key` must be an int seed or a PRNG key, got {key!r}.")

  def init(params):
    hvp_lib._check_params(params)  # pylint: disable=protected-access
    k = jax.random.PRNGKey(key) if isinstance(key, int) else key
    return HARPGState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params),
                      jax.tree.map(jnp.asarray, params), k)

  def update(updates, state, params=None, *, hvp_fn: Optional[Callable] = None,
             interpolation: Optional[Any] = None, **extra):
    del extra
    if params is None:
      raise ValueError("`params` is required by harpg (theta_t and the interpolation point).")
    if hvp_fn is None:
      raise ValueError("`hvp_fn` (point, v) -> hess L(point) v is required by harpg.update.")
    hvp_lib.check_like("updates", updates, params)
    key, k_q = jax.random.split(state.key)
    if interpolation is None:
      q = jax.random.uniform(k_q, ())
    else:
      q = jnp.asarray(interpolation, jnp.float32)
      if q.shape != ():
        raise ValueError(f"`interpolation` must be a scalar in [0, 1], got shape {q.shape}.")
    eta = eta_fn(state.count)
    diff = jax.tree.map(lambda p, r: p - r, params, state.prev_params)

    def corrected(_):
      v = hvp_fn(interpolate(params, state.prev_params, q), diff)
      hvp_lib.check_like("hvp_fn(point, v)", v, params)
      return jax.tree.map(lambda m, hv, g: ((1.0 - eta) * (m + hv) + eta * g).astype(m.dtype),
                          state.d, v, updates)

    first = lambda _: jax.tree.map(lambda g, m: g.astype(m.dtype), updates, state.d)
    d = jax.lax.cond(state.count == 0, first, corrected, None)
    out = igt.normalized_step(d, step_fn(state.count), normalize, eps)
    return out, HARPGState(state.count + 1, d, jax.tree.map(jnp.asarray, params), key)

  return optax.GradientTransformationExtraArgs(init, update)
