"""Tabular MDPs with exact solutions, written in jax so that `jax.grad` flows through them.

A `TabularMDP` is a pytree (flax.struct.dataclass) with
  P [S, A, S]      transition probabilities P(s' | s, a), rows sum to 1;
  r [S, A]         expected reward of taking a in s;
  rho [S]          start distribution;
  gamma            discount, a scalar leaf;
  reward_noise     std of Gaussian noise added to *sampled* rewards (exact solutions use r);
  terminal [S]     optional bool: designated terminal states, which must be absorbing with zero
                   reward, so that the exact values ignore them and episodes may stop there;
  horizon          static: None for the discounted objective J = E[sum_{t>=0} gamma^t r_t]
                   (gamma < 1), or H for the finite-horizon J = E[sum_{t<H} gamma^t r_t];
  obs              static: observations are "one_hot" (float [S]) or "index" (int32 scalar).

It is also an `Environment` (pgx_lab.envs.api) and its own params: `mdp.reset(key, mdp)`,
`mdp.step(key, state, action, mdp)`; the methods read only `params`, so a vmap over a batch of
MDPs works. `step` moves s' ~ P(. | s, a), returns r(s, a) + reward_noise * N(0, 1), sets
`terminated` when s' is in `terminal`, and `truncated` when the step count reaches `horizon`.

Policies are arrays `probs` [S, A] (stationary) or, for finite horizons, [H, S, A].
"""

import functools
from typing import NamedTuple, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from pgx_lab import validation
from pgx_lab.envs import api
from pgx_lab.envs import spaces

Array = jax.Array
OBS_TYPES = ("one_hot", "index")


def _concrete(*xs) -> bool:
  return not any(isinstance(x, jax.core.Tracer) for x in xs)


@flax.struct.dataclass
class TabularState:
  """Environment state: the state index s and the number of steps taken t (int32 scalars)."""

  s: Array
  t: Array


@flax.struct.dataclass
class TabularMDP(api.Environment):
  """A finite MDP (see the module docstring). Build it with `TabularMDP.create`, which checks it."""

  P: Array
  r: Array
  rho: Array
  gamma: Array
  reward_noise: Array
  terminal: Optional[Array] = None
  horizon: Optional[int] = flax.struct.field(pytree_node=False, default=None)
  obs: str = flax.struct.field(pytree_node=False, default="one_hot")

  @property
  def num_states(self) -> int:
    return self.P.shape[-3]

  @property
  def num_actions(self) -> int:
    return self.P.shape[-2]

  @classmethod
  def create(cls, P, r, rho, gamma, *, horizon: Optional[int] = None, reward_noise=0.0,
             terminal=None, obs: str = "one_hot") -> "TabularMDP":
    """Validates and builds an MDP; raises ValueError naming the bad argument.

    Args:
      P: [S, A, S] float transition probabilities, non-negative, rows summing to 1.
      r: [S, A] expected rewards.
      rho: [S] start distribution.
      gamma: scalar discount in [0, 1] ([0, 1) when `horizon` is None).
      horizon: None (discounted, infinite horizon) or a positive int H.
      reward_noise: scalar std >= 0 of the Gaussian noise on sampled rewards.
      terminal: None or [S] bool terminal states (absorbing: P[s, :, s] = 1, r[s, :] = 0).
      obs: "one_hot" or "index".
    Value checks (sums, signs) run when the inputs are concrete; shape checks always.
    """
    validation.check_array("P", P, ndim=3)
    P = jnp.asarray(P)
    s, a, s2 = P.shape
    if s != s2:
      raise ValueError(f"`P` must have shape [S, A, S], got {tuple(P.shape)}.")
    validation.check_array("r", r, ndim=2, kind="number")
    validation.check_shape("r", r, (s, a), against="P[:, :, 0]")
    validation.check_array("rho", rho, ndim=1)
    validation.check_shape("rho", rho, (s,), against="P[:, 0, 0]")
    validation.check_option("obs", obs, OBS_TYPES)
    if horizon is not None and (isinstance(horizon, bool) or not isinstance(horizon, int)
                                or horizon < 1):
      raise ValueError(f"`horizon` must be None or a positive int, got {horizon!r}.")
    if np.ndim(gamma) != 0:
      raise ValueError(f"`gamma` must be a scalar, got shape {np.shape(gamma)}.")
    if np.ndim(reward_noise) != 0:
      raise ValueError(f"`reward_noise` must be a scalar, got shape {np.shape(reward_noise)}.")
    dtype = P.dtype
    r, rho = jnp.asarray(r, dtype), jnp.asarray(rho, dtype)
    if terminal is not None:
      validation.check_array("terminal", terminal, ndim=1, kind="any")
      validation.check_shape("terminal", terminal, (s,), against="P[:, 0, 0]")
      terminal = jnp.asarray(terminal, bool)
    if _concrete(P, r, rho, gamma, reward_noise, terminal):
      p, tol = np.asarray(P), 1e-5 if dtype == np.float32 else 1e-8
      if np.any(p < 0) or not np.allclose(p.sum(-1), 1.0, atol=tol * s):
        raise ValueError("`P` must be non-negative with rows P[s, a, :] summing to 1.")
      if np.any(np.asarray(rho) < 0) or not np.isclose(np.asarray(rho).sum(), 1.0, atol=tol * s):
        raise ValueError("`rho` must be a distribution (non-negative, summing to 1).")
      g = float(gamma)
      if not (0.0 <= g <= 1.0) or (horizon is None and g >= 1.0):
        raise ValueError(f"`gamma` must be in [0, 1] ([0, 1) without a horizon), got {g}.")
      if float(reward_noise) < 0:
        raise ValueError(f"`reward_noise` must be >= 0, got {float(reward_noise)}.")
      if terminal is not None:
        ts = np.flatnonzero(np.asarray(terminal))
        if np.any(p[ts, :, ts] < 1 - tol) or np.any(np.asarray(r)[ts] != 0):
          raise ValueError("`terminal` states must be absorbing (P[s, :, s] = 1) with r[s, :] = 0.")
    return cls(P, r, rho, jnp.asarray(gamma, dtype), jnp.asarray(reward_noise, dtype), terminal,
               horizon, obs)

  # ---- the Environment API ----
  def default_params(self) -> "TabularMDP":
    return self

  def _observe(self, s: Array, params: "TabularMDP") -> Array:
    if params.obs == "index":
      return s
    return jax.nn.one_hot(s, params.num_states, dtype=params.P.dtype)

  def reset(self, key, params):
    """s_0 ~ rho; returns (obs, TabularState)."""
    s = jax.random.categorical(key, jnp.log(params.rho)).astype(jnp.int32)
    return self._observe(s, params), TabularState(s, jnp.zeros((), jnp.int32))

  def step(self, key, state, action, params):
    """One transition; `action` an int32 scalar in [0, A) (ValueError otherwise)."""
    self.check_action(action, params)
    k_next, k_noise = jax.random.split(key)
    gumbel = jax.random.gumbel(k_next, (params.num_states,), params.P.dtype)
    noise = jax.random.normal(k_noise, (), params.P.dtype)
    s_next, reward, terminated = _transition(params, state.s, action, gumbel, noise)
    t = state.t + 1
    truncated = (jnp.logical_and(t >= params.horizon, ~terminated)
                 if params.horizon is not None else jnp.zeros((), bool))
    return api.Transition(self._observe(s_next, params), TabularState(s_next, t), reward,
                          terminated, truncated, {})

  def action_space(self, params):
    return spaces.Discrete(params.num_actions)

  def observation_space(self, params):
    if params.obs == "index":
      return spaces.Discrete(params.num_states)
    return spaces.Box(0.0, 1.0, (params.num_states,))


def _transition(mdp: TabularMDP, s: Array, a: Array, gumbel: Array, noise: Array):
  """s' ~ P(. | s, a) by the Gumbel-max trick, r(s, a) + reward_noise * noise, and whether s' is
  terminal. s, a, noise [...] and gumbel [..., S] standard Gumbel / normal draws."""
  s_next = jnp.argmax(jnp.log(mdp.P[s, a]) + gumbel, axis=-1).astype(jnp.int32)
  reward = mdp.r[s, a] + mdp.reward_noise * noise
  terminated = mdp.terminal[s_next] if mdp.terminal is not None else jnp.zeros(s.shape, bool)
  return s_next, reward, terminated


# ---- policies ----
def policy_probs(theta: Array, features: Optional[Array] = None) -> Array:
  """Softmax policy probabilities.

  Args:
    theta: tabular logits [..., S, A] (e.g. [S, A], or [H, S, A] for a time-dependent policy),
      or, with `features`, weights [d].
    features: None, or phi [S, A, d]: pi(a|s) proportional to exp(phi(s, a) . theta).
  Returns:
    probs [..., S, A].
  """
  validation.check_array("theta", theta)
  if features is None:
    if theta.ndim < 2:
      raise ValueError(f"tabular `theta` must be [S, A] or [H, S, A], got {tuple(theta.shape)}.")
    return jax.nn.softmax(theta, axis=-1)
  validation.check_array("features", features, ndim=3)
  validation.check_array("theta", theta, ndim=1)
  validation.check_shape("theta", theta, features.shape[-1:], against="features[0, 0]")
  return jax.nn.softmax(features @ theta, axis=-1)


def _check_probs(mdp: TabularMDP, probs: Array) -> Array:
  """Validates probs [S, A] or [H, S, A]; returns [H, S, A] for finite horizons."""
  validation.check_array("probs", probs, ndim=(2, 3))
  sa = (mdp.num_states, mdp.num_actions)
  if probs.ndim == 3 and mdp.horizon is None:
    raise ValueError("`probs` must be [S, A] for a discounted MDP (horizon None).")
  if probs.ndim == 3:
    validation.check_shape("probs", probs, (mdp.horizon,) + sa, against="(horizon, S, A)")
  else:
    validation.check_shape("probs", probs, sa, against="P[:, :, 0]")
  if mdp.horizon is not None and probs.ndim == 2:
    probs = jnp.broadcast_to(probs, (mdp.horizon,) + sa)
  return probs


class Values(NamedTuple):
  """V [S] and Q [S, A] (discounted), or V_h [H, S] and Q_h [H, S, A] (finite horizon)."""

  v: Array
  q: Array


def evaluate(mdp: TabularMDP, probs: Array) -> Values:
  """Exact V^pi and Q^pi: a linear solve (I - gamma P_pi) V = r_pi, or backward recursion
  Q_h = r + gamma P V_{h+1}, V_h = sum_a pi_h Q_h with V_H = 0. probs [S, A] or [H, S, A]."""
  probs = _check_probs(mdp, probs)
  if mdp.horizon is None:
    p_pi = jnp.einsum("sa,sat->st", probs, mdp.P)
    r_pi = jnp.sum(probs * mdp.r, axis=-1)
    v = jnp.linalg.solve(jnp.eye(mdp.num_states, dtype=p_pi.dtype) - mdp.gamma * p_pi, r_pi)
    return Values(v, mdp.r + mdp.gamma * mdp.P @ v)

  def backward(v_next, pi_h):
    q = mdp.r + mdp.gamma * mdp.P @ v_next
    v = jnp.sum(pi_h * q, axis=-1)
    return v, (v, q)

  _, (v, q) = jax.lax.scan(backward, jnp.zeros_like(mdp.rho), probs, reverse=True)
  return Values(v, q)


def expected_return(mdp: TabularMDP, probs: Array) -> Array:
  """J = rho . V_0, the objective of `mdp` under `probs` (scalar)."""
  v = evaluate(mdp, probs).v
  return mdp.rho @ (v if mdp.horizon is None else v[0])


def occupancy(mdp: TabularMDP, probs: Array) -> Array:
  """State occupancy. Discounted: the normalised d^pi_rho [S] = (1 - gamma) sum_t gamma^t
  Pr(s_t = s), solved as (I - gamma P_pi)^T d = (1 - gamma) rho. Finite horizon: the marginals
  mu_h [H, S] = Pr(s_h = s), h = 0..H-1."""
  probs = _check_probs(mdp, probs)
  if mdp.horizon is None:
    p_pi = jnp.einsum("sa,sat->st", probs, mdp.P)
    eye = jnp.eye(mdp.num_states, dtype=p_pi.dtype)
    return jnp.linalg.solve((eye - mdp.gamma * p_pi).T, (1.0 - mdp.gamma) * mdp.rho)

  def forward(mu, pi_h):
    return jnp.einsum("s,sa,sat->t", mu, pi_h, mdp.P), mu

  _, mu = jax.lax.scan(forward, mdp.rho, probs)
  return mu


def _score_sum(probs: Array, w: Array, features: Optional[Array]) -> Array:
  """sum_{s,a} w(s, a) grad_theta log pi(a|s) of the softmax policy, w [S, A]. Tabular:
  d log pi(a|s) / d theta[s, b] = 1[a = b] - pi(b|s). Linear: phi(s, a) - E_pi phi(s, .)."""
  if features is None:
    return w - probs * jnp.sum(w, axis=-1, keepdims=True)
  phi_bar = jnp.einsum("sa,sad->sd", probs, features)
  return jnp.einsum("sa,sad->d", w, features) - jnp.sum(w, axis=-1) @ phi_bar


def policy_gradient(mdp: TabularMDP, theta: Array, features: Optional[Array] = None) -> Array:
  """Exact grad_theta J of the stationary softmax policy, by the policy gradient theorem
  (Sutton et al. 2000, Theorem 1), in closed form (no autodiff):
    discounted: grad J = 1/(1 - gamma) sum_{s,a} d^pi_rho(s) pi(a|s) Q(s, a) grad log pi(a|s);
    finite H:   grad J = sum_h gamma^h sum_{s,a} mu_h(s) pi(a|s) Q_h(s, a) grad log pi(a|s).
  Args: theta [S, A] (tabular) or [d] with features phi [S, A, d]. Returns: theta's shape."""
  probs = policy_probs(theta, features)
  if probs.ndim != 2:
    raise ValueError(f"`theta` must give a stationary policy [S, A], got {tuple(theta.shape)}.")
  vals = evaluate(mdp, probs)
  mu = occupancy(mdp, probs)
  if mdp.horizon is None:
    w = mu[:, None] * probs * vals.q / (1.0 - mdp.gamma)
  else:
    disc = mdp.gamma ** jnp.arange(mdp.horizon, dtype=probs.dtype)
    w = jnp.einsum("h,hs,sa,hsa->sa", disc, mu, probs, vals.q)
  return _score_sum(probs, w, features)


class Optimal(NamedTuple):
  """V* ([S] or [H, S]), Q* ([S, A] or [H, S, A]), a greedy one-hot pi* (same shape as Q*), J*."""

  v: Array
  q: Array
  probs: Array
  j: Array


def value_iteration(mdp: TabularMDP, tol: float = 1e-6, max_iters: int = 10_000) -> Optimal:
  """Optimal values and a greedy optimal policy (Bellman 1957).

  Discounted: Q <- r + gamma P max_a Q until the sup-change is below tol (1 - gamma) / gamma,
  so that |Q - Q*| <= tol, or below one ulp of max|Q| (float rounding leaves little more to
  gain), or after `max_iters` sweeps. Finite horizon: backward induction
  Q*_h = r + gamma P max_a Q*_{h+1}, exact, giving a time-dependent pi*_h.
  Args: mdp; tol > 0; max_iters a positive int (both static).
  """
  validation.check_positive("tol", tol)
  if not isinstance(max_iters, int) or max_iters < 1:
    raise ValueError(f"`max_iters` must be a positive int, got {max_iters!r}.")
  a = mdp.num_actions
  if mdp.horizon is not None:
    def backward(v_next, _):
      q = mdp.r + mdp.gamma * mdp.P @ v_next
      return jnp.max(q, axis=-1), (jnp.max(q, axis=-1), q)

    _, (v, q) = jax.lax.scan(backward, jnp.zeros_like(mdp.rho), None, length=mdp.horizon)
    v, q = v[::-1], q[::-1]
    return Optimal(v, q, jax.nn.one_hot(jnp.argmax(q, -1), a, dtype=q.dtype), mdp.rho @ v[0])

  thresh = tol * (1.0 - mdp.gamma) / jnp.maximum(mdp.gamma, 1e-12)
  ulp = jnp.finfo(mdp.r.dtype).eps

  def cond(c):
    floor = ulp * jnp.max(jnp.abs(c[0]))
    return jnp.logical_and(c[1] > jnp.maximum(thresh, floor), c[2] < max_iters)

  def body(c):
    q_new = mdp.r + mdp.gamma * mdp.P @ jnp.max(c[0], axis=-1)
    return q_new, jnp.max(jnp.abs(q_new - c[0])), c[2] + 1

  init = (mdp.r, jnp.asarray(jnp.inf, mdp.r.dtype), jnp.zeros((), jnp.int32))
  q, _, _ = jax.lax.while_loop(cond, body, init)
  v = jnp.max(q, axis=-1)
  return Optimal(v, q, jax.nn.one_hot(jnp.argmax(q, -1), a, dtype=q.dtype), mdp.rho @ v)


class Rollout(NamedTuple):
  """Sampled trajectories, [B, T] each: states s_t (int32), actions a_t (int32), rewards r_t
  (0 after termination), logp log pi(a_t|s_t) of the sampling policy, terminated (the step entered
  a terminal state) and mask (1 for steps up to and including the terminating one)."""

  states: Array
  actions: Array
  rewards: Array
  logp: Array
  terminated: Array
  mask: Array


@functools.partial(jax.jit, static_argnames=("num", "horizon"))
def sample_trajectories(key: Array, mdp: TabularMDP, probs: Array, num: int,
                        horizon: Optional[int] = None) -> Rollout:
  """`num` trajectories of `horizon` steps (default `mdp.horizon`), with `step`'s dynamics.

  Trajectories run on after termination inside the (absorbing, zero-reward) terminal states,
  with rewards zeroed there and `mask` 0. Jitted, with `num` and `horizon` static.

  Args:
    key: PRNG key.
    mdp: the MDP.
    probs: [S, A] or [H, S, A] policy.
    num: number of trajectories B (static int).
    horizon: steps T (static int); required when `mdp.horizon` is None, at most `mdp.horizon`.
  """
  probs = _check_probs(mdp, probs)
  horizon = mdp.horizon if horizon is None else horizon
  if not isinstance(horizon, int) or isinstance(horizon, bool) or horizon < 1:
    raise ValueError("`horizon` must be a positive int (required when mdp.horizon is None), "
                     f"got {horizon!r}.")
  if mdp.horizon is not None and horizon > mdp.horizon:
    raise ValueError(f"`horizon` {horizon} exceeds the MDP's horizon {mdp.horizon}.")
  if not isinstance(num, int) or num < 1:
    raise ValueError(f"`num` must be a positive int, got {num!r}.")
  pis = probs[:horizon] if probs.ndim == 3 else jnp.broadcast_to(probs, (horizon,) + probs.shape)
  # All noise is drawn up front (one RNG call each, far cheaper to compile than per-step keys);
  # the transition itself is the one `step` uses.
  k0, k_a, k_s, k_r = jax.random.split(key, 4)
  dt = mdp.P.dtype
  s0 = jax.random.categorical(k0, jnp.log(mdp.rho), shape=(num,)).astype(jnp.int32)
  g_a = jax.random.gumbel(k_a, (horizon, num, mdp.num_actions), dt)
  g_s = jax.random.gumbel(k_s, (horizon, num, mdp.num_states), dt)
  noise = jax.random.normal(k_r, (horizon, num), dt)

  def body(carry, inp):
    s, alive = carry
    pi_t, g_a_t, g_s_t, noise_t = inp
    logits = jnp.log(pi_t[s])                                            # [B, A]
    a = jnp.argmax(logits + g_a_t, axis=-1).astype(jnp.int32)
    s_next, reward, term = _transition(mdp, s, a, g_s_t, noise_t)
    logp = jnp.take_along_axis(logits, a[:, None], axis=-1)[:, 0]
    ys = (s, a, jnp.where(alive, reward, 0.0), logp, jnp.logical_and(alive, term), alive)
    return (s_next, jnp.logical_and(alive, ~term)), ys

  _, ys = jax.lax.scan(body, (s0, jnp.ones((num,), bool)), (pis, g_a, g_s, noise))
  s, a, r, logp, term, alive = (jnp.swapaxes(y, 0, 1) for y in ys)
  return Rollout(s, a, r, logp, term, alive.astype(r.dtype))
