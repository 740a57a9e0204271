"""Offline datasets from any `pgx_lab.envs.api.Environment` under a behaviour policy or mixture.

A policy is `policy_fn(key, obs) -> action` or `-> (action, logp)` (one unbatched observation).
Behaviours (D4RL-style "random / expert / medium-noisy / mixed" datasets, Fu et al. 2020,
arXiv:2004.07219):
  random  uniform over the action space (`space.sample`; unbounded Box axes on [-1, 1]);
  expert  the given expert policy;
  noisy   the expert with epsilon-random actions (Discrete) or censored Gaussian noise (Box);
  mixed   fixed fractions of episodes from each, recorded per episode as `behaviour` (an index
          into `BEHAVIOURS`) in the episode metadata.

Rollouts are one jitted call: `vmap` over episodes of a `lax.scan` over `max_steps` steps; a lane
stops recording at its episode's end (terminated or truncated; `max_steps` truncates the rest).
Episodes are then cut on the host into RLDS episodes (see `pgx_lab.data.rlds`).
"""

from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.stats import norm

from pgx_lab.data import rlds
from pgx_lab.envs import spaces
from pgx_lab.envs.api import Environment

PolicyFn = Callable[[jax.Array, Any], Any]
BEHAVIOURS = ("random", "expert", "noisy")


def _with_logp(policy_fn: PolicyFn) -> Callable[[jax.Array, Any], Tuple[jax.Array, jax.Array]]:
  """`policy_fn` returning (action, logp); logp is NaN (unknown) for a policy that gives none."""
  def fn(key, obs):
    out = policy_fn(key, obs)
    if isinstance(out, tuple):
      return out[0], jnp.asarray(out[1], jnp.float32)
    return out, jnp.float32(jnp.nan)
  return fn


def random_policy(space: spaces.Space) -> PolicyFn:
  """Uniform over `space`, with its exact log-density (-log n, or -sum log(high - low))."""
  if isinstance(space, spaces.Discrete):
    logp = -np.log(space.n) * int(np.prod(space.shape))
  else:
    low = np.maximum(np.broadcast_to(space.low, space.shape), -1.0)
    high = np.minimum(np.broadcast_to(space.high, space.shape), 1.0)
    logp = -np.sum(np.log(high - low))
  return lambda key, obs: (space.sample(key), jnp.float32(logp))


def noisy_policy(expert_fn: PolicyFn, space: spaces.Space, *, epsilon: float = 0.1,
                 sigma: float = 0.1) -> PolicyFn:
  """The expert with noise, and the exact log-prob of the taken action if the expert is
  deterministic (its own logp, if any, is ignored).

  Discrete: with probability `epsilon` a uniform action, else the expert's, so
  logp = log((1 - eps) 1[a = a*] + eps / n) per component. Box: a = clip(a* + sigma z, low, high)
  with z ~ N(0, I); the density w.r.t. Lebesgue plus atoms at the bounds (a censored Gaussian) is
  N(a; a*, sigma) inside the box and the tail mass Phi((low - a*) / sigma) or
  1 - Phi((high - a*) / sigma) at a bound.

  Args:
    expert_fn: the expert policy.
    space: its action space.
    epsilon: the random-action probability in [0, 1] (Discrete).
    sigma: the Gaussian noise scale > 0 (Box).
  """
  expert = _with_logp(expert_fn)
  if isinstance(space, spaces.Discrete):
    if not 0.0 <= epsilon <= 1.0:
      raise ValueError(f"`epsilon` must be in [0, 1], got {epsilon!r}.")

    def discrete(key, obs):
      k_exp, k_coin, k_rand = jax.random.split(key, 3)
      a_exp, _ = expert(k_exp, obs)
      explore = jax.random.bernoulli(k_coin, epsilon, space.shape)
      a = jnp.where(explore, space.sample(k_rand), a_exp).astype(jnp.int32)
      p = (1.0 - epsilon) * (a == a_exp) + epsilon / space.n
      return a, jnp.sum(jnp.log(p)).astype(jnp.float32)
    return discrete
  if not sigma > 0:
    raise ValueError(f"`sigma` must be > 0, got {sigma!r}.")
  low = jnp.broadcast_to(jnp.asarray(space.low, jnp.float32), space.shape)
  high = jnp.broadcast_to(jnp.asarray(space.high, jnp.float32), space.shape)

  def box(key, obs):
    k_exp, k_noise = jax.random.split(key)
    mu, _ = expert(k_exp, obs)
    a = jnp.clip(mu + sigma * jax.random.normal(k_noise, space.shape), low, high)
    lp = jnp.where(a <= low, norm.logcdf((low - mu) / sigma),
                   jnp.where(a >= high, norm.logsf((high - mu) / sigma),
                             norm.logpdf(a, mu, sigma)))
    return a, jnp.sum(lp).astype(jnp.float32)
  return box


def rollout(env: Environment, env_params: Any, key: jax.Array, policies: List[PolicyFn],
            behaviour: jax.Array, max_steps: int) -> Dict[str, Any]:
  """Runs one episode per entry of `behaviour` (vmap over episodes, lax.scan over steps).

  Args:
    env, env_params: the environment and its params.
    key: PRNG key.
    policies: the behaviour policies; episode e follows `policies[behaviour[e]]`.
    behaviour: [E] int32 policy index per episode.
    max_steps: the time limit T (an episode still running after T steps is truncated).

  Returns:
    Dict of [E, T, ...] arrays: obs, action, reward, logp, next_obs, terminated, truncated
    (truncated also set at step T - 1 of a still-running episode), alive (the step belongs to
    the episode).
  """
  space = env.action_space(env_params)
  dtype = jnp.int32 if isinstance(space, spaces.Discrete) else jnp.float32
  fns = [(lambda f: lambda k, o: (lambda a, lp: (jnp.asarray(a, dtype), lp))(*f(k, o)))(
      _with_logp(p)) for p in policies]

  def episode(key, b):
    k_reset, k_steps = jax.random.split(key)
    obs0, state0 = env.reset(k_reset, env_params)

    def step(carry, inp):
      obs, state, done = carry
      k, t = inp
      k_pol, k_env = jax.random.split(k)
      action, logp = jax.lax.switch(b, fns, k_pol, obs)
      out = env.step(k_env, state, action, env_params)
      trunc = jnp.logical_or(out.truncated, t == max_steps - 1) & ~out.terminated
      rec = dict(obs=obs, action=action, reward=out.reward, logp=logp, next_obs=out.obs,
                 terminated=out.terminated, truncated=trunc, alive=~done)
      keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(done, o, n), new, old)
      new_done = done | out.terminated | trunc
      return (keep(out.obs, obs), keep(out.state, state), new_done), rec

    ts = jnp.arange(max_steps)
    _, rec = jax.lax.scan(step, (obs0, state0, jnp.bool_(False)),
                          (jax.random.split(k_steps, max_steps), ts))
    return rec

  keys = jax.random.split(key, behaviour.shape[0])
  return jax.jit(jax.vmap(episode))(keys, behaviour)


def episode_from_transitions(obs: Any, actions: Any, rewards: Any, terminated: bool,
                             final_obs: Any, logp: Any = None, **metadata) -> Dict[str, Any]:
  """One RLDS episode (see `pgx_lab.data.rlds`) from its T transitions.

  Args:
    obs: [T, ...] observations (array or dict of arrays) where the actions were taken.
    actions: [T, ...] actions. rewards: [T]. logp: [T] behaviour log-probs or None.
    terminated: whether the last transition entered a terminal state (else truncated).
    final_obs: [...] the observation after the last transition.
    **metadata: per-episode scalars (e.g. behaviour=1).
  """
  pad = lambda x: np.concatenate([np.asarray(x), np.zeros_like(np.asarray(x)[:1])])
  t = np.shape(rewards)[0]
  flag = lambda i: np.arange(t + 1) == i
  steps = dict(observation=jax.tree.map(lambda o, f: np.concatenate([o, np.asarray(f)[None]]),
                                        obs, final_obs),
               action=pad(actions), reward=pad(rewards),
               discount=pad(1.0 - (flag(t - 1)[:t] & bool(terminated))),
               is_first=flag(0), is_last=flag(t), is_terminal=flag(t) & bool(terminated))
  if logp is not None:
    steps["behaviour_logp"] = pad(logp)
  return {"steps": steps, **metadata}


def generate_episodes(env: Environment, env_params: Any, key: jax.Array, *, num_episodes: int,
                      max_steps: int, behaviour: str = "random",
                      expert_fn: Optional[PolicyFn] = None,
                      fractions: Optional[Mapping[str, float]] = None, epsilon: float = 0.1,
                      sigma: float = 0.1) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
  """Episodes of `env` under a behaviour ("random", "expert", "noisy" or "mixed").

  Args:
    env, env_params: the environment and its params.
    key: PRNG key.
    num_episodes: E >= 1. max_steps: the time limit T >= 1.
    behaviour: one of BEHAVIOURS or "mixed".
    expert_fn: the expert policy (needed by "expert", "noisy" and mixtures using them).
    fractions: for "mixed", {behaviour: fraction} summing to 1; counts are rounded by largest
      remainder and the episodes are laid out behaviour by behaviour.
    epsilon, sigma: the noise of "noisy" (see `noisy_policy`).

  Returns:
    (episodes, metadata): RLDS episode dicts with a `behaviour` index and `behaviour_logp` (NaN
    where the policy gives none), and JSON metadata for `rlds.write_episodes`.
  """
  if not isinstance(num_episodes, int) or num_episodes < 1:
    raise ValueError(f"`num_episodes` must be a positive int, got {num_episodes!r}.")
  if not isinstance(max_steps, int) or max_steps < 1:
    raise ValueError(f"`max_steps` must be a positive int, got {max_steps!r}.")
  if behaviour not in BEHAVIOURS + ("mixed",):
    raise ValueError(f"unknown `behaviour` {behaviour!r}; expected one of "
                     f"{BEHAVIOURS + ('mixed',)}.")
  fractions = dict(fractions or {}) if behaviour == "mixed" else {behaviour: 1.0}
  if behaviour == "mixed":
    if not fractions or any(k not in BEHAVIOURS or not v >= 0 for k, v in fractions.items()):
      raise ValueError(f"`fractions` must map names in {BEHAVIOURS} to fractions >= 0, got "
                       f"{fractions!r}.")
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
      raise ValueError(f"`fractions` must sum to 1, got {fractions!r}.")
  if expert_fn is None and any(fractions.get(k, 0) > 0 for k in ("expert", "noisy")):
    raise ValueError("`expert_fn` is required by the 'expert' and 'noisy' behaviours.")
  exact = np.array([fractions.get(k, 0.0) for k in BEHAVIOURS]) * num_episodes
  counts = np.floor(exact).astype(int)
  counts[np.argsort(counts - exact)[:num_episodes - counts.sum()]] += 1
  space = env.action_space(env_params)
  expert = expert_fn if expert_fn is not None else random_policy(space)  # unused if absent
  policies = [random_policy(space), expert, noisy_policy(expert, space, epsilon=epsilon,
                                                          sigma=sigma)]
  ids = np.repeat(np.arange(len(BEHAVIOURS), dtype=np.int32), counts)
  rec = jax.device_get(rollout(env, env_params, key, policies, jnp.asarray(ids), max_steps))
  lengths = rec["alive"].sum(1)
  episodes = []
  for e, n in enumerate(lengths):
    sl = lambda x: x[e, :n]
    episodes.append(episode_from_transitions(
        jax.tree.map(sl, rec["obs"]), sl(rec["action"]), sl(rec["reward"]),
        bool(rec["terminated"][e, n - 1]), jax.tree.map(lambda x: x[e, n - 1], rec["next_obs"]),
        logp=sl(rec["logp"]), behaviour=np.int32(ids[e])))
  metadata = dict(env=env.name, max_steps=max_steps, behaviours=list(BEHAVIOURS),
                  fractions={k: float(fractions.get(k, 0.0)) for k in BEHAVIOURS},
                  counts={k: int(c) for k, c in zip(BEHAVIOURS, counts)},
                  epsilon=epsilon, sigma=sigma)
  return episodes, metadata
