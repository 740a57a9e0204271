"""Shared runner of the npg_igt and harpg papers: five policy-gradient methods on any toy, and
the 1-D LQR toy. (`_cartpole_pg` holds the CartPole toy and the driver of both papers.)

Methods (Fatkhullin, Barakat, Kireeva, He, ICML 2023), each counted by the trajectories it samples;
every gradient sample is the mean over a batch of `batch` trajectories, every Hessian-vector sample
the mean over `hessian_batch` FRESH trajectories (1 and 1: the theory's one-trajectory regime):

  reinforce  theta += alpha g_R, g_R = mean_i (sum_h grad log pi_ih) sum_t gamma^t r_it (const.)
  gpomdp     theta += alpha g,   g = GPOMDP (`score_hessian.gpomdp_surrogate`)          (const.)
  npg_igt    pgx_lab.second_order.igt.npg_igt, g sampled at the extrapolated point
  harpg      pgx_lab.second_order.harpg.harpg(normalize=False), B from score_hessian_vp at the
             random interpolation point (batch at t = 0, then batch + hessian_batch per iteration)
  nharpg     harpg(normalize=True)

Batches: `_cartpole_pg` converts the authors' env-step batches (`run_PG.py`) to trajectories.
A toy may carry a linear state-and-time baseline, refitted to every gradient batch (garage's
LinearFeatureBaseline, the authors' choice; `fit_baseline`, `shaped_rewards`, `Toy.baseline_dim`).

Honest tuning: each method's step size (alpha, or gamma_0 of the paper schedule) takes every value
of its grid; the value with the lowest mean final gap on the TUNING seeds is kept, and the reported
numbers come from separate EVALUATION seeds. "Final gap" is J* - J averaged over the iterates of
the last 10% of the trajectory budget; slopes are least-squares fits of log10(mean gap) against
log10(trajectories) over the last decade of the budget (checkpoints where the mean gap is > 0;
nan when fewer than two are). Each method's runs (grid x seeds) are one jitted lax.scan, vmapped.

LQR toy (specs/rl_theory_offline_systems.md Sec. 1(d)): `pgx_lab.envs.lqr.harpg_toy_params`
(s' = s + a + 0.1 w, r = -(s^2 + 0.1 a^2), H = 20, gamma = 0.99, s_0 ~ U[-1, 1]) with the Gaussian
linear policy a ~ N(theta s, 0.3^2), theta a scalar (K = -theta), started at theta_0 = -0.3; the
score is exact: J_H(theta) in float64 closed form, J* = max_theta J_H. For theta >= 0 the closed
loop is unstable over H = 20 and one-trajectory estimates there are heavy-tailed; step sizes too
large for that are what the grids rule out.
"""

import math
import time
from typing import Callable, Dict, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pgx_lab.envs import lqr
from pgx_lab.second_order import harpg as harpg_lib
from pgx_lab.second_order import hvp as hvp_lib
from pgx_lab.second_order import igt
from pgx_lab.second_order import score_hessian as sh

SIGMA, THETA0 = 0.3, -0.3
METHODS = ("reinforce", "gpomdp", "npg_igt", "harpg", "nharpg")
_UNNORM = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)
_NORM = (0.01, 0.03, 0.1, 0.3, 1.0)
# One-trajectory grids. HARPG's unnormalised step decays as (2/(t+2))^{1/2}, so its grid sits one
# decade higher (its best value was inside the grid in both ranges tried; the baselines' too).
GRIDS = {"reinforce": _UNNORM, "gpomdp": _UNNORM, "npg_igt": _NORM,
         "harpg": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2), "nharpg": _NORM}
# Batch-mean gradients are ~100x less noisy, so the unnormalised grids sit two decades higher.
_BATCH = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
BATCH_GRIDS = {"reinforce": _BATCH, "gpomdp": _BATCH, "npg_igt": _NORM, "harpg": _BATCH,
               "nharpg": _NORM}


class Toy(NamedTuple):
  """A toy for `run_setup`.

  name: title for plots. theta0: [P] float32 start. gamma: discount. grids: method -> step grid.
  sample(theta [P], key, n) -> (logp_fn, rewards [n, H], mask [n, H] or None), plus feats
    [n, H, baseline_dim] when baseline_dim > 0: n trajectories at theta; logp_fn(theta') -> [n, H]
    log-probabilities of their actions under theta'; feats: baseline features of (s_h, h).
  gap(thetas [..., P] numpy, key) -> numpy [...]: J* - J(theta) (exact or Monte Carlo).
  baseline_dim: 0 (no baseline) or F, the width of a linear baseline b(s_h, h) = feats . c whose
    coefficients c are refitted to every gradient batch (`fit_baseline`, `shaped_rewards`).
  """
  name: str
  theta0: np.ndarray
  gamma: float
  grids: Dict[str, tuple]
  sample: Callable
  gap: Callable
  baseline_dim: int = 0


# ------------------------------------------------------------------------------------ baseline
def shaped_rewards(rew, mask, b, gamma):
  """r'_h = r_h - b_h + gamma b_{h+1} (b_H = 0), so that sum_{t>=h} gamma^t r'_t = RTG_h -
  gamma^h b_h: the GPOMDP weights minus a state-and-time baseline, for any consumer of rewards
  (`score_hessian.gpomdp_surrogate`, `score_hessian_vp`). rew, mask, b: [..., H]; b is zeroed
  where mask is 0. Unbiased for grad J and for the Hessian estimator as long as b does not depend
  on theta (Sutton et al. 2000; Baxter & Bartlett 2001)."""
  b = b * mask
  b_next = jnp.concatenate([b[..., 1:], jnp.zeros_like(b[..., :1])], -1)
  return (rew - b + gamma * b_next) * mask


def fit_baseline(feats, rew, mask, gamma, reg=1e-5):
  """garage's `LinearFeatureBaseline.fit` (rlworkgroup/garage, np/baselines): ridge regression of
  the per-step returns G_h = sum_{t>=h} gamma^{t-h} r_t (garage's `discount_cumsum`) on the
  features, c = lstsq(X^T X + reg I, X^T G), valid steps only (garage retries with 10 reg when
  the solve gives NaN; not needed here). feats [n, H, F], rew and mask [n, H] -> c [F]."""
  h = rew.shape[-1]
  ret = sh.reward_to_go(rew, gamma, mask) / gamma ** jnp.arange(h, dtype=rew.dtype)
  x = (feats * mask[..., None]).reshape(-1, feats.shape[-1])
  y = (ret * mask).reshape(-1)
  a = x.T @ x + reg * jnp.eye(x.shape[-1], dtype=x.dtype)
  return jnp.linalg.lstsq(a, x.T @ y)[0]


# ------------------------------------------------------------------------------------ methods
def _ascent_grad(kind, logp_fn, rew, mask, gamma, th):
  """Batch-mean REINFORCE or GPOMDP estimate of grad J at th [P] from sampled trajectories
  (logp_fn, rew [n, H], mask [n, H] or None). With baseline-shaped rewards REINFORCE's return is
  sum_t gamma^t r_t - b(s_0, 0) (`shaped_rewards` telescopes), still unbiased."""
  m = jnp.ones_like(rew) if mask is None else mask
  if kind == "reinforce":
    ret = jnp.sum(rew * m * gamma ** jnp.arange(rew.shape[-1]), -1)                  # [n]
    f = lambda t: jnp.mean(jnp.sum(jnp.where(m > 0, logp_fn(t), 0.0) * m, -1) * ret)
  else:
    f = lambda t: sh.gpomdp_surrogate(logp_fn(t), rew, gamma, mask)
  return jax.grad(f)(th)


def _batch(toy, th, key, n, coef):
  """n trajectories at th: (logp_fn, rewards, mask, coef'), the rewards shaped by the baseline of
  coefficients coef [F] and coef' refitted to this batch (garage's order: predict with the old fit,
  fit after); rewards as sampled and coef' = coef when the toy has no baseline."""
  out = toy.sample(th, key, n)
  logp_fn, rew, mask = out[:3]
  if not toy.baseline_dim:
    return logp_fn, rew, mask, coef
  m = jnp.ones_like(rew) if mask is None else mask
  b = out[3] @ coef
  return (logp_fn, shaped_rewards(rew, m, b, toy.gamma), mask,
          fit_baseline(out[3], rew, m, toy.gamma))


def make_run(method, toy: Toy, iters: int, batch: int = 1, hessian_batch: int = 1,
             hessian_terms: str = "both"):
  """run(step, key) -> iterates [iters, P] of one training run of `method` on `toy` (jittable,
  vmappable): theta_1 .. theta_iters, i.e. after each iteration. hessian_terms: "both" (the
  unbiased B v = g <grad log p, v> + hess Phi v) or "hvp" (hess Phi v alone, a biased diagnostic:
  the authors' code, as read, scales the first term by about -1/(steps in the Hessian batch)).
  With a baseline (toy.baseline_dim > 0) every gradient batch is shaped by the current fit and
  refits it; the Hessian batch of (N)-HARPG uses the current fit and does not refit (the authors'
  `stormhess.py` closure predicts with the value function, the fit follows the step)."""
  if method not in METHODS:
    raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
  if hessian_terms not in ("both", "hvp"):
    raise ValueError(f"`hessian_terms` must be 'both' or 'hvp', got {hessian_terms!r}.")
  for name, n in (("iters", iters), ("batch", batch), ("hessian_batch", hessian_batch)):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
      raise ValueError(f"`{name}` must be a positive int, got {n!r}.")
  gamma = toy.gamma

  def run(step, key):
    th0 = jnp.asarray(toy.theta0, jnp.float32)
    coef0 = jnp.zeros((max(toy.baseline_dim, 1),), jnp.float32)
    if method in ("reinforce", "gpomdp"):
      def body(c, k):
        th, coef = c
        logp_fn, rew, mask, coef = _batch(toy, th, k, batch, coef)
        th = th + step * _ascent_grad(method, logp_fn, rew, mask, gamma, th)
        return (th, coef), th

      return jax.lax.scan(body, (th0, coef0), jax.random.split(key, iters))[1]
    if method == "npg_igt":
      tx = igt.npg_igt(lambda t: igt.decaying_step(t, step))
    else:
      power = 1.0 if method == "nharpg" else 0.5
      tx = harpg_lib.harpg(lambda t: igt.decaying_step(t, step, power),
                           normalize=method == "nharpg")
    k_init, k_run = jax.random.split(key)
    state = tx.init(th0)
    if method != "npg_igt":
      state = state._replace(key=k_init)

    def body(c, k):
      th, s, coef = c
      k_g, k_h = jax.random.split(k)
      if method == "npg_igt":                 # the gradient is sampled at the extrapolated point
        q = igt.query_point(s, th)
        logp_fn, rew, mask, coef_new = _batch(toy, q, k_g, batch, coef)
        u, s = tx.update(-_ascent_grad("gpomdp", logp_fn, rew, mask, gamma, q), s, th)
      else:
        logp_fn, rew, mask, coef_new = _batch(toy, th, k_g, batch, coef)

        def hvp_fn(point, v):                 # fresh trajectories at the interpolation point
          logp_h, rew_h, mask_h, _ = _batch(toy, point, k_h, hessian_batch, coef)
          if hessian_terms == "hvp":
            phi = lambda q: sh.gpomdp_surrogate(logp_h(q), rew_h, gamma, mask_h)
            return -hvp_lib.hvp(phi, point, v)
          return -sh.score_hessian_vp(logp_h, point, v, rew_h, gamma, mask_h)[1]
        u, s = tx.update(-_ascent_grad("gpomdp", logp_fn, rew, mask, gamma, th), s, th,
                         hvp_fn=hvp_fn)
      th = th + u
      return (th, s, coef_new), th

    return jax.lax.scan(body, (th0, state, coef0), jax.random.split(k_run, iters))[1]

  return run


def iterations(method, budget, batch=1, hessian_batch=1) -> int:
  """Iterations that fit in `budget` trajectories (for (N)-HARPG: batch at t = 0, then
  batch + hessian_batch per iteration)."""
  if method in ("harpg", "nharpg"):
    return 1 + (budget - batch) // (batch + hessian_batch)
  return budget // batch


def traj_counts(method, iters, batch=1, hessian_batch=1) -> np.ndarray:
  """Trajectories sampled after each iteration [iters]: batch (t+1), plus hessian_batch t for
  (N)-HARPG (no Hessian sample at t = 0); 2t+1 for one trajectory of each."""
  t = np.arange(iters)
  extra = hessian_batch * t if method in ("harpg", "nharpg") else 0
  return batch * (t + 1) + extra


# ------------------------------------------------------------------------------------ driver
def run_setup(toy: Toy, cfg: Dict, methods=METHODS) -> Dict:
  """Runs `methods` on `toy` with cfg {budget, batch, hessian_batch, hessian_terms, tune_seeds,
  eval_seeds, grid (indices into toy.grids[m]), tail_points (None: every tail iterate)};
  returns {"curves" [eval, checkpoints], "final" [eval], "steps", "slopes", "grids", "seconds",
  "checkpoints", "cfg", "toy"}."""
  n_seeds, budget = cfg["tune_seeds"] + cfg["eval_seeds"], cfg["budget"]
  batch, hb = cfg.get("batch", 1), cfg.get("hessian_batch", 1)
  checkpoints = np.unique(np.round(np.geomspace(max(10, batch), budget, 25)).astype(int))
  out = {"curves": {}, "final": {}, "steps": {}, "slopes": {}, "grids": {}, "seconds": {}}
  for method in methods:
    t0 = time.perf_counter()
    grid = np.array([toy.grids[method][i] for i in cfg["grid"]], np.float32)
    iters = iterations(method, budget, batch, hb)
    run = make_run(method, toy, iters, batch, hb, cfg.get("hessian_terms", "both"))
    seeds = jax.random.split(jax.random.PRNGKey(0), n_seeds)
    ths = np.asarray(jax.jit(jax.vmap(jax.vmap(run, (None, 0)), (0, None)))(grid, seeds),
                     np.float64)                                                 # [G, S, T, P]
    counts = traj_counts(method, iters, batch, hb)
    tail = np.nonzero(counts > 0.9 * budget)[0]
    if cfg.get("tail_points") and tail.size > cfg["tail_points"]:
      tail = tail[np.round(np.linspace(0, tail.size - 1, cfg["tail_points"])).astype(int)]
    ck = np.searchsorted(counts, checkpoints, side="right") - 1
    need, inv = np.unique(np.concatenate([ck, tail]), return_inverse=True)
    gap = toy.gap(ths[:, :, need], jax.random.PRNGKey(1))                        # [G, S, K]
    gap = np.where(np.isfinite(gap), gap, 1e12)           # a run that blew up scores terribly
    final = gap[:, :, inv[ck.size:]].mean(-1)                                    # [G, S]
    best = int(np.argmin(final[:, :cfg["tune_seeds"]].mean(1)))
    curve = gap[best, cfg["tune_seeds"]:][:, inv[:ck.size]]                     # [E, C]
    out["curves"][method] = curve
    out["final"][method] = final[best, cfg["tune_seeds"]:]
    out["steps"][method] = float(grid[best])
    out["grids"][method] = [float(x) for x in grid]
    fit = (checkpoints >= budget / 10) & (curve.mean(0) > 0)   # a gap of exactly 0: no log
    out["slopes"][method] = (float(np.polyfit(np.log10(checkpoints[fit]),
                                              np.log10(curve.mean(0)[fit]), 1)[0])
                             if fit.sum() >= 2 else float("nan"))
    out["seconds"][method] = time.perf_counter() - t0
  out.update(checkpoints=checkpoints, cfg=dict(cfg), toy=toy.name)
  return out


def markdown_table(out) -> str:
  """Per method: step grid, tuned step, final J*-J mean ± std over evaluation seeds, median, the
  run-mean J*-J (`fmt(..., run_mean=True)`, descriptive, in no rule), fitted slope, seconds."""
  n = next(iter(out["final"].values())).size
  rows = [f"| method | step grid | chosen step | final J*-J (mean ± std, {n} eval seeds) | "
          "median | run-mean J*-J | log-log slope | seconds |", "|---|---|---|---|---|---|---|---|"]
  for m in out["final"]:
    f = out["final"][m]
    rows.append(f"| {m} | {', '.join(f'{x:g}' for x in out['grids'][m])} | {out['steps'][m]:g} | "
                f"{f.mean():.3g} ± {f.std():.2g} | {np.median(f):.3g} | "
                f"{fmt(out, m, run_mean=True)} | {out['slopes'][m]:.2f} | "
                f"{out['seconds'][m]:.1f} |")
  return "\n".join(rows)


def fmt(out, method, run_mean=False) -> str:
  """'mean ± std' over evaluation seeds of `method`'s final gap, or (run_mean) of its run-mean gap:
  J* - J averaged over the log-spaced checkpoints of the whole run (the area under the gap curve
  against log10(trajectories), normalised; it tells apart runs whose final gaps tie at 0)."""
  f = out["curves"][method].mean(1) if run_mean else out["final"][method]
  return f"{f.mean():.3g} ± {f.std():.2g}"


# ------------------------------------------------------------------------------------ LQR toy
def rollout(key, theta, p):
  """One trajectory of the toy under a ~ N(theta s, SIGMA^2) with the dynamics of
  `lqr.LQR.step` (1-D: clip(A s + B a + sqrt(W) w)). theta [1]. Returns xs, us [H, 1], r [H]."""
  k0, k_eps, k_w = jax.random.split(key, 3)
  a, b, q, r, w = (float(np.asarray(m)[0, 0]) for m in (p.A, p.B, p.Q, p.R, p.W))
  x0 = math.sqrt(float(np.asarray(p.x0_cov)[0, 0]) * 3.0) * jax.random.uniform(k0, (), minval=-1.0)
  eps = jax.random.normal(k_eps, (p.horizon,))
  noise = jax.random.normal(k_w, (p.horizon,))

  def step(x, inp):
    e, n = inp
    u = theta[0] * x + SIGMA * e
    x_next = jnp.clip(a * x + b * u + math.sqrt(w) * n, -p.state_clip, p.state_clip)
    return x_next, (x, u, -(q * x * x + r * u * u))

  _, (xs, us, rew) = jax.lax.scan(step, x0, (eps, noise))
  return xs[:, None], us[:, None], rew


def _logp_fn(xs, us):
  """theta [1] -> [..., H] log pi(u_h|x_h) through `lqr.policy_logp` (K = -theta); xs, us
  [..., H, 1]."""
  log_sigma = jnp.log(jnp.float32(SIGMA))
  return lambda th: lqr.policy_logp(-th.reshape(1, 1), log_sigma, xs, us)


def exact_j(theta, p) -> np.ndarray:
  """J_H(theta) in float64 closed form for an array of scalar thetas: with L = A + B theta,
  c_0 = Sigma0, c_{t+1} = L^2 c_t + W + B^2 sigma^2, J = -sum_t gamma^t ((Q + R theta^2) c_t +
  R sigma^2) (the covariance recursion of `lqr.exact_return(finite_horizon=True)`)."""
  a, b, q, r, w, c0 = (float(np.asarray(m)[0, 0]) for m in (p.A, p.B, p.Q, p.R, p.W, p.x0_cov))
  th = np.asarray(theta, np.float64)
  lsq, c, total = (a + b * th) ** 2, np.full(th.shape, c0), np.zeros(th.shape)
  with np.errstate(over="ignore", invalid="ignore"):     # unstable thetas overflow to -inf
    for t in range(p.horizon):
      total -= float(p.gamma) ** t * ((q + r * th**2) * c + r * SIGMA**2)
      c = lsq * c + w + b * b * SIGMA**2
  return total


def optimum(p):
  """(theta*, J*) maximising J_H over theta by a grid on [-3, 1] and golden-section search."""
  grid = np.linspace(-3.0, 1.0, 40001)
  i = int(np.argmax(exact_j(grid, p)))
  lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
  g = (math.sqrt(5) - 1) / 2
  for _ in range(80):
    m1, m2 = hi - g * (hi - lo), lo + g * (hi - lo)
    if exact_j(m1, p) > exact_j(m2, p):
      hi = m2
    else:
      lo = m1
  th = 0.5 * (lo + hi)
  return th, float(exact_j(th, p))


def lqr_toy(p=None, grids=None) -> Toy:
  """The LQR toy as a `Toy` (exact gap); p defaults to `lqr.harpg_toy_params()`, grids to GRIDS.
  One trajectory uses `key` itself (as the one-trajectory runs always did), n > 1 split(key, n)."""
  p = lqr.harpg_toy_params() if p is None else p
  j_star = optimum(p)[1]

  def sample(theta, key, n):
    if n == 1:
      xs, us, rew = (x[None] for x in rollout(key, theta, p))
    else:
      xs, us, rew = jax.vmap(rollout, (0, None, None))(jax.random.split(key, n), theta, p)
    return _logp_fn(xs, us), rew, None

  def gap(thetas, key):
    del key
    th = np.where(np.isfinite(thetas[..., 0]), thetas[..., 0], 1e3)
    return j_star - exact_j(th, p)

  return Toy("1-D LQR, Gaussian linear policy", np.array([THETA0], np.float32), float(p.gamma),
             dict(GRIDS if grids is None else grids), sample, gap)


def _make_run(method, p, iters):
  """run(step, key) -> scalar thetas [iters] of one ONE-trajectory run of `method` on the LQR toy
  (the form notebooks/04_second_order_pg.ipynb uses)."""
  run = make_run(method, lqr_toy(p), iters)
  return lambda step, key: run(step, key)[:, 0]


def toy_check(p=None, n=4000):
  """(mean, standard error) of the discounted return of n rollouts at theta_0, and the exact
  J_H(theta_0): a check that the rollouts and the closed form describe the same toy."""
  p = lqr.harpg_toy_params() if p is None else p
  keys = jax.random.split(jax.random.PRNGKey(123), n)
  disc = p.gamma ** jnp.arange(p.horizon)
  rets = np.asarray(jax.jit(jax.vmap(lambda k: jnp.sum(
      rollout(k, jnp.array([THETA0]), p)[2] * disc)))(keys), np.float64)
  return rets.mean(), rets.std() / math.sqrt(n), float(exact_j(THETA0, p))
