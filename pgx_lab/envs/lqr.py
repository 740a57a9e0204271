"""A discounted linear-quadratic regulator (1-D or N-D) with a Gaussian linear policy and exact J.

Dynamics, cost and policy (state x in R^n, action u in R^m):

    x_{t+1} = A x_t + B u_t + w_t,   w_t ~ N(0, W),     x_0 ~ zero-mean, E[x_0 x_0'] = Sigma0
    r_t = -(x_t' Q x_t + u_t' R u_t)
    u_t = -K x_t + sigma * eps_t,    eps_t ~ N(0, I_m),  sigma a scalar or per-dimension [m]

x_0 is Gaussian N(0, Sigma0) (`init_dist="gaussian"`) or Sigma0^{1/2} times a vector of
independent U[-sqrt(3), sqrt(3)] (`"uniform"`, e.g. Sigma0 = 1/3 gives x_0 ~ U[-1, 1] in 1-D);
the exact return depends on x_0 only through Sigma0. The episode is truncated after `horizon`
steps and never terminated.

Exact return (the standard derivation, e.g. Fazel et al. 2018 "Global convergence of policy
gradient methods for the LQR", Sec. 2, here with a discount and two noise sources). Let
L = A - B K, S_u = diag(sigma^2) and N = W + B S_u B' (the one-step noise covariance of x). If
rho(sqrt(gamma) L) < 1, the expected discounted cost-to-go from x is V(x) = x' P_K x + c with

    P_K = Q + K' R K + gamma L' P_K L                          (discrete Lyapunov equation)
    c   = (tr(R S_u) + gamma tr(P_K N)) / (1 - gamma)

(insert V into V(x) = E[cost | x] + gamma E[V(x')], using E[u'Ru | x] = x'K'RKx + tr(R S_u) and
E[x'Px' | x] = x'L'PLx + tr(P N)). Hence

    J(K, sigma) = E[sum_t gamma^t r_t]
                = -( tr(P_K Sigma0) + gamma/(1-gamma) tr(P_K (W + B S_u B')) + tr(R S_u)/(1-gamma) ).

P_K is found by a linear solve of (I - gamma kron(L', L')) vec(P) = vec(Q + K'RK) (O(n^6), fine for
small n), so `jax.grad` of `exact_return` is the exact policy gradient. The optimal gain K* solves
the discounted Riccati equation, i.e. the standard DARE of the scaled system
(sqrt(gamma) A, sqrt(gamma) B, Q, R), K* = gamma (R + gamma B'PB)^{-1} B'PA. Since P_{K*} <= P_K
(Loewner order) for every stabilising K, K* maximises J(., sigma) for every sigma, W and Sigma0;
J*(sigma) = exact_return(K*, sigma) and J*(0) = -tr(P*(Sigma0 + gamma/(1-gamma) W)) is the
supremum over all policies of this form.

`state_clip` clips x_{t+1} elementwise to [-state_clip, state_clip] so that an unstable gain in a
rollout stays finite in float32. The exact formulas ignore the clip; for a stabilising K with the
default clip (1e4) the clip is reached with negligible probability.
"""

import functools
import numbers
from typing import Any, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from pgx_lab import validation
from pgx_lab.envs import api
from pgx_lab.envs import spaces

Array = jax.Array
INIT_DISTS = ("gaussian", "uniform")


@flax.struct.dataclass
class LQRParams:
  """A, B [n, n], [n, m]; Q [n, n] PSD; R [m, m] PD; W, x0_cov [n, n] PSD; scalars gamma,
  state_clip; static horizon (int) and init_dist ("gaussian" or "uniform"). Build with
  `make_params`."""

  A: Array
  B: Array
  Q: Array
  R: Array
  W: Array
  x0_cov: Array
  gamma: Array
  state_clip: Array
  horizon: int = flax.struct.field(pytree_node=False, default=50)
  init_dist: str = flax.struct.field(pytree_node=False, default="gaussian")


@flax.struct.dataclass
class LQRState:
  """x: [n] current state; t: int32 steps taken in this episode."""

  x: Array
  t: Array


def _mat(name, v, shape, psd=False, pd=False):
  """`v` as a float32 [shape] array; ValueError naming `name` on a wrong shape, a non-finite
  value, or (with psd/pd) a matrix that is not symmetric positive (semi-)definite."""
  v = np.asarray(v, np.float64)
  if v.shape != tuple(shape) or not np.all(np.isfinite(v)):
    raise ValueError(f"`{name}` must be a finite array of shape {tuple(shape)}, got {v.shape}.")
  if psd or pd:
    eig = np.linalg.eigvalsh(0.5 * (v + v.T)) if np.allclose(v, v.T) else None
    if eig is None or eig.min() < (1e-12 if pd else -1e-12):
      raise ValueError(f"`{name}` must be symmetric positive {'definite' if pd else 'semi-definite'}.")
  return jnp.asarray(v, jnp.float32)


def _as_float(v) -> float:
  """float(v) for a real scalar, NaN otherwise (so that range checks on it fail)."""
  try:
    return float(v) if np.ndim(v) == 0 else float("nan")
  except (TypeError, ValueError):
    return float("nan")


def make_params(A, B, Q, R, W=0.0, x0_cov=1.0, gamma=0.9, horizon=50, init_dist="gaussian",
                state_clip=1e4) -> LQRParams:
  """Validated `LQRParams`. A [n, n] and B [n, m] (scalars mean n = m = 1); Q [n, n] PSD;
  R [m, m] PD; W [n, n] PSD process-noise covariance; x0_cov [n, n] PSD covariance of x_0
  (scalars are multiplied by the identity for W and x0_cov); gamma in (0, 1); horizon >= 1 int;
  init_dist in ("gaussian", "uniform"); state_clip > 0. Raises ValueError naming the argument."""
  A = np.atleast_2d(np.asarray(A, np.float64))
  if A.ndim != 2 or A.shape[0] != A.shape[1]:
    raise ValueError(f"`A` must be square [n, n], got shape {A.shape}.")
  n = A.shape[0]
  B = np.asarray(B, np.float64)
  B = B.reshape(1, 1) if B.ndim == 0 else B
  if B.ndim != 2 or B.shape[0] != n:
    raise ValueError(f"`B` must have shape [n={n}, m], got {B.shape}.")
  m = B.shape[1]
  eye = lambda v, k: np.eye(k) * v if np.ndim(v) == 0 else v
  if not 0.0 < _as_float(gamma) < 1.0:
    raise ValueError(f"`gamma` must be a float in (0, 1), got {gamma!r}.")
  if not isinstance(horizon, numbers.Integral) or horizon < 1:
    raise ValueError(f"`horizon` must be a positive int, got {horizon!r}.")
  validation.check_option("init_dist", init_dist, INIT_DISTS)
  if not _as_float(state_clip) > 0:
    raise ValueError(f"`state_clip` must be a positive number, got {state_clip!r}.")
  return LQRParams(A=_mat("A", A, (n, n)), B=_mat("B", B, (n, m)),
                   Q=_mat("Q", eye(Q, n), (n, n), psd=True), R=_mat("R", eye(R, m), (m, m), pd=True),
                   W=_mat("W", eye(W, n), (n, n), psd=True),
                   x0_cov=_mat("x0_cov", eye(x0_cov, n), (n, n), psd=True),
                   gamma=jnp.float32(gamma), state_clip=jnp.float32(state_clip),
                   horizon=int(horizon), init_dist=init_dist)


def harpg_toy_params() -> LQRParams:
  """The 1-D toy of specs/rl_theory_offline_systems.md Sec. 1(d) for N-PG-IGT / HARPG
  (Fatkhullin et al. 2023): s' = s + a + 0.1 w, r = -(s^2 + 0.1 a^2), H = 20, gamma = 0.99,
  s_0 ~ U[-1, 1]. Its policy a ~ N(theta s, 0.3^2) is K = -theta, sigma = 0.3 here."""
  return make_params(1.0, 1.0, 1.0, 0.1, W=0.01, x0_cov=1.0 / 3.0, gamma=0.99, horizon=20,
                     init_dist="uniform")


def _psd_sqrt(M: Array) -> Array:
  """Symmetric square root of a PSD matrix [n, n] (eigh; works for singular M)."""
  lam, V = jnp.linalg.eigh(M)
  return (V * jnp.sqrt(jnp.maximum(lam, 0.0))) @ V.T


class LQR(api.Environment):
  """The LQR behind the `Environment` API: obs = x [n] float32, action u [m] (unbounded Box)."""

  def default_params(self) -> LQRParams:
    """1-D: A = B = Q = R = 1, W = 0.01, x_0 ~ N(0, 1), gamma = 0.9, H = 50."""
    return make_params(1.0, 1.0, 1.0, 1.0, W=0.01, x0_cov=1.0, gamma=0.9, horizon=50)

  def reset(self, key: Array, params: LQRParams) -> Tuple[Array, LQRState]:
    """x_0 [n] from the initial distribution; t = 0."""
    n = params.A.shape[0]
    if params.init_dist == "uniform":
      z = jax.random.uniform(key, (n,), minval=-np.sqrt(3.0), maxval=np.sqrt(3.0))
    else:
      z = jax.random.normal(key, (n,))
    x = _psd_sqrt(params.x0_cov) @ z
    return x, LQRState(x=x, t=jnp.zeros((), jnp.int32))

  def step(self, key: Array, state: LQRState, action: Array, params: LQRParams) -> api.Transition:
    """Reward -(x'Qx + u'Ru) at the current x; x' = clip(Ax + Bu + w) with w drawn from `key`;
    truncated at t + 1 = H, never terminated. `action` is u [m] (ValueError naming it on a wrong
    shape or dtype, or a non-finite value when concrete)."""
    self.check_action(action, params)
    x, u = state.x, action.astype(jnp.float32)
    cost = x @ params.Q @ x + u @ params.R @ u
    w = _psd_sqrt(params.W) @ jax.random.normal(key, x.shape)
    x_next = jnp.clip(params.A @ x + params.B @ u + w, -params.state_clip, params.state_clip)
    t = state.t + 1
    return api.Transition(x_next, LQRState(x=x_next, t=t), -cost, jnp.asarray(False),
                          t >= params.horizon, {})

  def action_space(self, params: LQRParams) -> spaces.Box:
    """Unbounded Box of shape [m]."""
    return spaces.Box(-np.inf, np.inf, (params.B.shape[1],))

  def observation_space(self, params: LQRParams) -> spaces.Box:
    """Box of shape [n] (entries within +-state_clip)."""
    return spaces.Box(-np.inf, np.inf, (params.A.shape[0],))


# ----------------------------------------------------------------------------- the linear policy
def _check_policy(K, log_sigma, x, u=None):
  """ValueError naming the argument unless K [m, n], log_sigma scalar or [m], x [..., n] and
  u [..., m] (when given) are float arrays."""
  validation.check_array("K", K, ndim=2)
  m, n = K.shape
  validation.check_array("log_sigma", log_sigma, ndim=(0, 1))
  if log_sigma.ndim == 1:
    validation.check_shape("log_sigma", log_sigma, (m,), against="K[:, 0]")
  validation.check_array("x", x)
  if x.ndim < 1 or x.shape[-1] != n:
    raise ValueError(f"`x` must have shape [..., n={n}] (n = K.shape[1]), got {x.shape}.")
  if u is not None:
    validation.check_array("u", u)
    validation.check_shape("u", u, x.shape[:-1] + (m,), against="x[..., :1] with m = K.shape[0]")


def policy_sample(key: Array, K: Array, log_sigma: Array, x: Array) -> Array:
  """u = -K x + exp(log_sigma) * eps. K [m, n]; log_sigma scalar or [m]; x [..., n] -> u [..., m]."""
  _check_policy(K, log_sigma, x)
  mean = -x @ K.T
  return mean + jnp.exp(log_sigma) * jax.random.normal(key, mean.shape, mean.dtype)


def policy_logp(K: Array, log_sigma: Array, x: Array, u: Array) -> Array:
  """log N(u; -K x, diag(exp(2 log_sigma))). K [m, n]; log_sigma scalar or [m]; x [..., n];
  u [..., m] -> [...]."""
  _check_policy(K, log_sigma, x, u)
  ls = jnp.broadcast_to(log_sigma, (K.shape[0],))
  z = (u + x @ K.T) * jnp.exp(-ls)
  return jnp.sum(-0.5 * z**2 - ls - 0.5 * jnp.log(2.0 * jnp.pi), axis=-1)


# ------------------------------------------------------------------------------ exact solutions
def _lyapunov(L: Array, M: Array, gamma: Array) -> Array:
  """P [n, n] solving P = M + gamma L' P L (row-major vec: vec(L'PL) = kron(L', L') vec(P))."""
  n = L.shape[0]
  lhs = jnp.eye(n * n, dtype=L.dtype) - gamma * jnp.kron(L.T, L.T)
  P = jnp.linalg.solve(lhs, M.reshape(-1)).reshape(n, n)
  return 0.5 * (P + P.T)


def spectral_radius(K: Array, params: LQRParams) -> float:
  """rho(sqrt(gamma) (A - B K)) for a concrete K [m, n] (numpy; not jittable)."""
  L = np.asarray(params.A, np.float64) - np.asarray(params.B, np.float64) @ np.asarray(K, np.float64)
  return float(np.sqrt(float(params.gamma)) * np.max(np.abs(np.linalg.eigvals(L))))


def is_stabilizing(K: Array, params: LQRParams) -> Array:
  """Jittable bool: rho(sqrt(gamma)(A - BK)) < 1. By Lyapunov's theorem this holds iff the
  solution X of X = I + gamma L'XL is positive definite (for an eigenpair L v = l v,
  v*Xv (1 - gamma |l|^2) = |v|^2 > 0)."""
  X = _lyapunov(params.A - params.B @ K, jnp.eye(params.A.shape[0], dtype=K.dtype), params.gamma)
  return jnp.all(jnp.isfinite(X)) & (jnp.linalg.eigvalsh(X)[0] > 0)


def check_gain(K: Array, params: LQRParams, need_stable: bool = True) -> None:
  """ValueError naming `K` unless K is a float [m, n] array and, when `need_stable` and K is
  concrete (not traced by jit/vmap/grad), rho(sqrt(gamma)(A - B K)) < 1."""
  validation.check_array("K", K, ndim=2)
  validation.check_shape("K", K, (params.B.shape[1], params.A.shape[0]), against="[m, n] of B.T")
  if need_stable and not isinstance(K, jax.core.Tracer) and not isinstance(
      params.A, jax.core.Tracer):
    rho = spectral_radius(K, params)
    if not rho < 1.0:
      raise ValueError(f"`K` is not stabilising: rho(sqrt(gamma)(A - B K)) = {rho:.4g} >= 1, "
                       "so the discounted return is -infinity.")


def cost_matrix(K: Array, params: LQRParams) -> Array:
  """P_K [n, n] solving P = Q + K'RK + gamma (A-BK)' P (A-BK). K [m, n] must be stabilising."""
  check_gain(K, params, need_stable=True)
  return _lyapunov(params.A - params.B @ K, params.Q + K.T @ params.R @ K, params.gamma)


def exact_return(K: Array, sigma: Any, params: LQRParams, finite_horizon: bool = False) -> Array:
  """Exact E[sum_t gamma^t r_t] of u = -Kx + sigma eps (module docstring), differentiable in K, sigma.

  Args:
    K: [m, n] gain. With `finite_horizon=False` it must be stabilising: a concrete unstable K
      raises ValueError naming `K`; a traced one (jit, vmap, grad) gives NaN.
    sigma: scalar or [m] policy standard deviation (>= 0; sigma = 0 is the deterministic policy).
    params: `LQRParams`.
    finite_horizon: False for the infinite discounted sum; True for the sum over the first
      `params.horizon` steps (what one rollout of the environment collects), computed from the
      covariance recursion Sigma_{t+1} = L Sigma_t L' + N; any K is allowed there.
  Returns:
    scalar J.
  """
  check_gain(K, params, need_stable=not finite_horizon)
  sigma = jnp.asarray(sigma, K.dtype)
  validation.check_array("sigma", sigma, ndim=(0, 1))
  if sigma.ndim == 1:
    validation.check_shape("sigma", sigma, (K.shape[0],), against="K[:, 0]")
  return _exact_return(K, sigma, params, finite_horizon)


@functools.partial(jax.jit, static_argnums=3)
def _exact_return(K, sigma, params, finite_horizon):
  """`exact_return` after validation (sigma an array of shape () or [m]), jitted."""
  S_u = jnp.diag(jnp.broadcast_to(sigma**2, (K.shape[0],)))
  L, N = params.A - params.B @ K, params.W + params.B @ S_u @ params.B.T
  Qk, g, u_cost = params.Q + K.T @ params.R @ K, params.gamma, jnp.trace(params.R @ S_u)
  if finite_horizon:
    def one(cov, t):
      return L @ cov @ L.T + N, g**t * (jnp.trace(Qk @ cov) + u_cost)
    _, costs = jax.lax.scan(one, params.x0_cov, jnp.arange(params.horizon, dtype=K.dtype))
    return -jnp.sum(costs)
  P = _lyapunov(L, Qk, g)
  J = -(jnp.trace(P @ params.x0_cov) + (u_cost + g * jnp.trace(P @ N)) / (1.0 - g))
  return jnp.where(is_stabilizing(K, params), J, jnp.nan)


def optimal_gain(params: LQRParams, tol: float = 1e-6, max_iter: int = 10_000,
                 newton_steps: int = 3) -> Tuple[Array, Array]:
  """(K* [m, n], P* [n, n]) of the discounted Riccati equation (module docstring).

  Riccati value iteration from P = Q on the scaled system until the relative change is below
  `tol` (or `max_iter` steps), then `newton_steps` Newton-Hewer steps (policy evaluation by the
  Lyapunov solve, then the greedy gain; Hewer 1971) to polish to working precision. Jittable, not
  differentiable (a while loop). Raises ValueError naming `params` when, concretely, the result
  is not stabilising ((sqrt(gamma) A, sqrt(gamma) B) not stabilisable or (A, Q) not detectable).
  """
  K, P = _riccati(params, tol, max_iter, newton_steps)
  if not isinstance(K, jax.core.Tracer) and not spectral_radius(K, params) < 1.0:
    raise ValueError("`params`: the discounted Riccati iteration did not find a stabilising gain "
                     "((sqrt(gamma) A, sqrt(gamma) B) not stabilisable or (A, Q) not detectable).")
  return K, P


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _riccati(params, tol, max_iter, newton_steps):
  """`optimal_gain` without the final check, jitted (tol, max_iter, newton_steps static)."""
  A, B, Q, R, g = params.A, params.B, params.Q, params.R, params.gamma
  gain = lambda P: g * jnp.linalg.solve(R + g * B.T @ P @ B, B.T @ P @ A)

  def riccati(P):
    return Q + g * A.T @ P @ A - g * A.T @ P @ B @ gain(P)

  def cond(c):
    P, P_old, it = c
    return (it < max_iter) & (jnp.max(jnp.abs(P - P_old)) > tol * (1.0 + jnp.max(jnp.abs(P))))

  P, _, _ = jax.lax.while_loop(cond, lambda c: (riccati(c[0]), c[0], c[2] + 1),
                               (riccati(Q), Q, jnp.int32(1)))
  for _ in range(newton_steps):
    K = gain(P)
    P = _lyapunov(A - B @ K, Q + K.T @ R @ K, g)
  K = gain(P)
  return K, P


def optimal_return(params: LQRParams, sigma: Any = 0.0) -> Array:
  """J*(sigma) = exact_return(K*, sigma): the best return of a Gaussian linear policy with this
  sigma (sigma = 0 gives the supremum over all such policies)."""
  return exact_return(optimal_gain(params)[0], sigma, params)
