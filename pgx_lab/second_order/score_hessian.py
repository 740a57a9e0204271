"""The score-function (likelihood-ratio) Hessian estimator of a trajectory, matrix-free.

For J(theta) = E_{tau ~ p(.|theta)}[sum_{t<H} gamma^t r_t] and the GPOMDP surrogate of one
trajectory

    Phi(tau, theta) = sum_{h<H} log pi_theta(a_h|s_h) * stop_grad(sum_{t>=h} gamma^t r_t - b),

g(tau, theta) = grad Phi is the GPOMDP gradient (Baxter & Bartlett 2001) and

    B(tau, theta) = grad Phi(tau, theta) grad log p(tau|theta)^T + hess Phi(tau, theta),
    grad log p(tau|theta) = sum_h grad log pi_theta(a_h|s_h),

is unbiased for the Hessian of J: E[B] = hess J (differentiate E_theta[g] = grad J under the
integral; the constant baseline b changes neither, since E_theta[b sum_h grad log pi_h] = 0 for
every theta). This is the estimator of Fatkhullin, Barakat, Kireeva, He (ICML 2023, Sec. 4,
HARPG), also HAPG (Shen et al. 2019) and SHARP (Salehkaleybar et al. 2022); the authors' code
(`STORMHess_optimizer.py`, `step`) forms it as hvp(surrogate) + grad(surrogate) * <grad log-lik, v>.

Matrix-free product. With c_i = <grad log p(tau_i|theta), v>, B v = g c + H_Phi v. Both terms come
from ONE forward-over-reverse pass: weight trajectory i by w_i(theta) = exp(L_i(theta) -
stop_grad(L_i(theta))) with L_i = sum_h log pi_h (so w_i = 1 and d w_i = c_i along v), take the
gradient of sum_i w_i Phi_i in a copy p of the parameters only (w held fixed), and differentiate
that gradient forward along v at p = theta:
    d/de [sum_i w_i(theta + e v) grad Phi_i(theta + e v)] = sum_i (c_i g_i + H_i v).

Everything here is maths on arrays and functions: the caller supplies `logp_fn(params) -> [N, H]`
(the log-probabilities of the sampled actions of N trajectories, re-computed from params) and
the rewards; no model or environment is imported.
"""

from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp

from pgx_lab import validation
from pgx_lab.second_order import hvp as hvp_lib

PyTree = Any
sg = jax.lax.stop_gradient


def _check_traj_arrays(logp_shape, rewards, mask) -> None:
  """ValueError naming `rewards`/`mask` unless they are float arrays of `logp_shape` ([H] or
  [N, H])."""
  if len(logp_shape) not in (1, 2):
    raise ValueError(f"`logp_fn` must return log-probs of shape [H] or [N, H], got {logp_shape}.")
  validation.check_array("rewards", rewards, ndim=(1, 2))
  validation.check_shape("rewards", rewards, logp_shape, against="logp_fn(params)")
  if mask is not None:
    validation.check_array("mask", mask, ndim=(1, 2), kind="number")
    validation.check_shape("mask", mask, logp_shape, against="logp_fn(params)")


def reward_to_go(rewards: jax.Array, gamma=1.0, mask: Optional[jax.Array] = None) -> jax.Array:
  """sum_{t>=h} gamma^t r_t m_t for every h: rewards [..., H] (mask [..., H] or None) -> [..., H].

  The discount is absolute (gamma^t, not gamma^(t-h)), as in the GPOMDP estimator of
  J = E[sum_t gamma^t r_t]."""
  validation.check_array("rewards", rewards)
  if rewards.ndim < 1:
    raise ValueError(f"`rewards` must have shape [..., H], got {rewards.shape}.")
  r = rewards if mask is None else rewards * mask
  disc = jnp.asarray(gamma, r.dtype) ** jnp.arange(r.shape[-1], dtype=r.dtype)
  return jnp.flip(jnp.cumsum(jnp.flip(r * disc, -1), -1), -1)


def gpomdp_surrogate(logp: jax.Array, rewards: jax.Array, gamma=1.0,
                     mask: Optional[jax.Array] = None, baseline=0.0) -> jax.Array:
  """Phi averaged over trajectories: mean_i sum_h logp[i, h] m[i, h] sg(RTG[i, h] - b).

  Args:
    logp: [H] or [N, H] log pi(a_h|s_h) of the sampled actions (differentiable).
    rewards: same shape, rewards r_h.
    gamma: discount (scalar).
    mask: None or same shape, 1 for real steps (0 for padding after the episode ended).
    baseline: scalar b subtracted from the reward-to-go.
  Returns:
    scalar; its gradient is the GPOMDP estimate of grad J (ascent direction).
  """
  validation.check_array("logp", logp, ndim=(1, 2))
  _check_traj_arrays(logp.shape, rewards, mask)
  m = jnp.ones_like(logp) if mask is None else mask.astype(logp.dtype)
  weight = sg((reward_to_go(rewards, gamma, m) - baseline) * m)
  per_traj = jnp.sum(jnp.where(m > 0, logp, 0.0) * weight, axis=-1)
  return jnp.mean(per_traj)


def score_hessian_vp(logp_fn: Callable[[PyTree], jax.Array], params: PyTree, v: PyTree,
                     rewards: jax.Array, gamma=1.0, mask: Optional[jax.Array] = None,
                     baseline=0.0) -> Tuple[PyTree, PyTree]:
  """(g, B v): the GPOMDP gradient and the score-function Hessian estimator times v, averaged
  over the N trajectories given (module docstring), from one forward-over-reverse pass.

  Args:
    logp_fn: `logp_fn(params) -> [H] or [N, H]`, the log-probabilities of the trajectories'
      sampled actions under `params` (the trajectories are closed over).
    params: pytree of float arrays, the point theta at which B is evaluated.
    v: pytree like `params`, the direction.
    rewards: [H] or [N, H] rewards, the shape of logp_fn's output.
    gamma: discount; mask: None or [H] / [N, H] step mask; baseline: constant b.
  Returns:
    (g, Bv): pytrees like `params`; both are for J (maximisation). For a loss L = -J to minimise,
    negate both.
  Raises:
    ValueError naming `params`, `v`, `rewards` or `mask` on bad input (before tracing the HVP).
  """
  hvp_lib._check_params(params)  # pylint: disable=protected-access
  hvp_lib.check_like("v", v, params)
  out = jax.eval_shape(logp_fn, params)
  _check_traj_arrays(tuple(out.shape), rewards, mask)
  m = jnp.ones(out.shape, out.dtype) if mask is None else mask.astype(out.dtype)

  def weighted_grad(theta):
    log_lik = jnp.sum(jnp.where(m > 0, logp_fn(theta), 0.0) * m, axis=-1)     # [N] or []
    w = jnp.exp(log_lik - sg(log_lik))                                         # 1, tangent c_i

    def surrogate(p):
      logp = logp_fn(p)
      if logp.ndim == 1:
        return gpomdp_surrogate(logp, rewards, gamma, m, baseline) * w
      rtg = sg((reward_to_go(rewards, gamma, m) - baseline) * m)
      return jnp.mean(w * jnp.sum(jnp.where(m > 0, logp, 0.0) * rtg, axis=-1))

    return jax.grad(surrogate)(theta)

  v = jax.tree.map(lambda a, b: jnp.asarray(a, jnp.result_type(b)), v, params)
  return jax.jvp(weighted_grad, (params,), (v,))


def score_hessian_terms(logp_fn: Callable[[PyTree], jax.Array], params: PyTree, v: PyTree,
                        rewards: jax.Array, gamma=1.0, mask: Optional[jax.Array] = None,
                        baseline=0.0) -> Tuple[PyTree, PyTree]:
  """The two terms of B v computed separately, (g <grad log p, v>, hess Phi v), each averaged
  over trajectories; a slower reference for `score_hessian_vp` (one HVP plus per-trajectory
  gradients). Arguments as in `score_hessian_vp`."""
  hvp_lib._check_params(params)  # pylint: disable=protected-access
  hvp_lib.check_like("v", v, params)
  out = jax.eval_shape(logp_fn, params)
  _check_traj_arrays(tuple(out.shape), rewards, mask)
  m = jnp.ones(out.shape, out.dtype) if mask is None else mask.astype(out.dtype)
  two_d = len(out.shape) == 2
  phi = lambda p, i: gpomdp_surrogate(logp_fn(p)[i] if two_d else logp_fn(p),
                                      rewards[i] if two_d else rewards,
                                      gamma, m[i] if two_d else m, baseline)
  lik = lambda p, i: jnp.sum((logp_fn(p)[i] if two_d else logp_fn(p)) * (m[i] if two_d else m))
  idx = jnp.arange(out.shape[0] if two_d else 1)

  def outer(i):
    g_i = jax.grad(phi)(params, i)
    c_i = jax.jvp(lambda p: lik(p, i), (params,), (v,))[1]
    return jax.tree.map(lambda x: x * c_i, g_i)

  first = jax.tree.map(lambda x: jnp.mean(x, 0), jax.vmap(outer)(idx))
  second = hvp_lib.hvp(lambda p: gpomdp_surrogate(logp_fn(p), rewards, gamma, m, baseline),
                       params, v)
  return first, second
