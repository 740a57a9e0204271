"""Shared runner of the npg_igt and harpg papers: five policy-gradient methods on the 1-D LQR toy.

Set-up (specs/rl_theory_offline_systems.md Sec. 1(d); Fatkhullin et al., ICML 2023): the LQR of
`pgx_lab.envs.lqr.harpg_toy_params` (s' = s + a + 0.1 w, r = -(s^2 + 0.1 a^2), H = 20,
gamma = 0.99, s_0 ~ U[-1, 1]) with the Gaussian linear policy a ~ N(theta s, 0.3^2), theta a
scalar (the gain K = -theta of `lqr`), started at theta_0 = -0.3 (J_H -4.04; theta* = -0.912,
J* = -2.406). For theta >= 0 the closed loop s' = (1 + theta) s + ... is unstable over H = 20 and
the one-trajectory estimates there are so heavy-tailed that their median has the wrong sign, so a
run that steps there rarely comes back: step sizes too large for that are what the grids rule
out. The baselines use a constant step alpha (tuned). Methods, all at ONE trajectory
per gradient sample and counted by trajectories sampled (HARPG/N-HARPG sample two per iteration
after the first, one at theta_t and a fresh one at the interpolation point):

  reinforce  theta += alpha g_R, g_R = (sum_h grad log pi_h) sum_t gamma^t r_t   (constant alpha)
  gpomdp     theta += alpha g,   g = GPOMDP                                       (constant alpha)
  npg_igt    pgx_lab.second_order.igt.npg_igt, g sampled at the extrapolated point
  harpg      pgx_lab.second_order.harpg.harpg(normalize=False), B from score_hessian_vp
  nharpg     harpg(normalize=True)

Honest tuning: each method's step size (alpha, or gamma_0 of the paper schedule) takes every
value of its 5-point grid (`GRIDS`); the value with the lowest mean final gap on the TUNING seeds
is kept, and the reported numbers come from separate EVALUATION seeds. The score is exact: the
finite-horizon J_H(theta) (the objective the rollouts estimate) in float64 closed form, and
J* = max_theta J_H(theta) found by a dense grid and golden-section refinement. The "final gap"
is J* - J averaged over the iterates of the last 10% of the trajectory budget (less noisy than
the last iterate alone). Each method's runs (grid x seeds) are one jitted lax.scan vmapped.
"""

import math
import os
import time
from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

from pgx_lab.envs import lqr
from pgx_lab.second_order import harpg as harpg_lib
from pgx_lab.second_order import igt
from pgx_lab.second_order import score_hessian as sh

SIGMA, THETA0 = 0.3, -0.3
METHODS = ("reinforce", "gpomdp", "npg_igt", "harpg", "nharpg")
_UNNORM = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)
_NORM = (0.01, 0.03, 0.1, 0.3, 1.0)
# HARPG's unnormalised step decays as (2/(t+2))^{1/2}, so its grid sits one decade higher (its
# best value was inside the grid in both ranges tried; the constant-step baselines' too).
GRIDS = {"reinforce": _UNNORM, "gpomdp": _UNNORM, "npg_igt": _NORM,
         "harpg": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2), "nharpg": _NORM}
SIZES = {"small": dict(budget=300, tune_seeds=2, eval_seeds=3, grid=(1, 2)),
         "full": dict(budget=20000, tune_seeds=10, eval_seeds=20, grid=(0, 1, 2, 3, 4))}


# ------------------------------------------------------------------------------------ the toy
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
  """theta [1] -> [H] log pi(u_h|x_h) through `lqr.policy_logp` (K = -theta)."""
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


# ------------------------------------------------------------------------------------ methods
def _gpomdp(th, key, p):
  xs, us, rew = rollout(key, th, p)
  return jax.grad(lambda t: sh.gpomdp_surrogate(_logp_fn(xs, us)(t), rew, p.gamma))(th)


def _reinforce(th, key, p):
  xs, us, rew = rollout(key, th, p)
  ret = jnp.sum(rew * p.gamma ** jnp.arange(p.horizon))
  return jax.grad(lambda t: jnp.sum(_logp_fn(xs, us)(t)) * ret)(th)


def _make_run(method, p, iters):
  """run(step, key) -> thetas [iters] of one training run of `method` (jittable, vmappable)."""

  def run(step, key):
    th0 = jnp.full((1,), THETA0, jnp.float32)
    if method in ("reinforce", "gpomdp"):
      est = _reinforce if method == "reinforce" else _gpomdp

      def body(c, k):
        th = c + step * est(c, k, p)
        return th, th[0]

      _, ths = jax.lax.scan(body, th0, jax.random.split(key, iters))
      return ths
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
      th, s = c
      k_g, k_h = jax.random.split(k)
      if method == "npg_igt":
        u, s = tx.update(None, s, th, grad_fn=lambda q: -_gpomdp(q, k_g, p))
      else:
        def hvp_fn(point, v):
          xs, us, rew = rollout(k_h, point, p)               # fresh trajectory at theta^_t
          return jax.tree.map(jnp.negative,
                              sh.score_hessian_vp(_logp_fn(xs, us), point, v, rew, p.gamma)[1])
        u, s = tx.update(-_gpomdp(th, k_g, p), s, th, hvp_fn=hvp_fn)
      th = th + u
      return (th, s), th[0]

    _, ths = jax.lax.scan(body, (th0, state), jax.random.split(k_run, iters))
    return ths

  return run


def traj_counts(method, iters):
  """Trajectories sampled after each iteration: t+1, or 2t+1 for (N)-HARPG (none for B at t=0)."""
  t = np.arange(iters)
  return 2 * t + 1 if method in ("harpg", "nharpg") else t + 1


# ------------------------------------------------------------------------------------ driver
def run_all(size: str, workdir: str, methods=METHODS) -> Dict:
  """Runs `methods` at `size`; returns {"curves", "final", "steps", "slopes", "checkpoints",
  "jstar", "theta_star", "seconds", "grids", "check"} (see `markdown_table`) and writes a log-log
  plot to `<workdir>/lqr_pg.png`."""
  if size not in SIZES:
    raise ValueError(f"`size` must be one of {tuple(SIZES)}, got {size!r}.")
  cfg, p = SIZES[size], lqr.harpg_toy_params()
  th_star, j_star = optimum(p)
  # A check of the toy: the rollouts' mean return at theta_0 matches the exact J_H.
  keys = jax.random.split(jax.random.PRNGKey(123), 4000)
  disc = p.gamma ** jnp.arange(p.horizon)
  rets = np.asarray(jax.jit(jax.vmap(lambda k: jnp.sum(
      rollout(k, jnp.array([THETA0]), p)[2] * disc)))(keys), np.float64)
  j0 = float(exact_j(THETA0, p))
  check = (rets.mean(), rets.std() / math.sqrt(rets.size), j0)
  n_seeds = cfg["tune_seeds"] + cfg["eval_seeds"]
  budget = cfg["budget"]
  checkpoints = np.unique(np.round(np.geomspace(10, budget, 25)).astype(int))
  out = {"curves": {}, "final": {}, "steps": {}, "slopes": {}, "grids": {}, "seconds": {}}
  for method in methods:
    t0 = time.perf_counter()
    grid = np.array([GRIDS[method][i] for i in cfg["grid"]], np.float32)
    iters = budget if method not in ("harpg", "nharpg") else (budget + 1) // 2
    run = _make_run(method, p, iters)
    seeds = jax.random.split(jax.random.PRNGKey(0), n_seeds)
    ths = jax.jit(jax.vmap(jax.vmap(run, (None, 0)), (0, None)))(grid, seeds)   # [G, S, T]
    ths = np.asarray(ths, np.float64)
    gap = j_star - exact_j(np.where(np.isfinite(ths), ths, 1e3), p)             # [G, S, T]
    gap = np.where(np.isfinite(gap), gap, 1e12)
    counts = traj_counts(method, iters)
    tail = counts > 0.9 * budget
    final = gap[:, :, tail].mean(-1)                                            # [G, S]
    best = int(np.argmin(final[:, :cfg["tune_seeds"]].mean(1)))
    ev = slice(cfg["tune_seeds"], None)
    idx = np.searchsorted(counts, checkpoints, side="right") - 1
    curve = gap[best, ev][:, idx]                                               # [E, C]
    out["curves"][method] = curve
    out["final"][method] = final[best, ev]
    out["steps"][method] = float(grid[best])
    out["grids"][method] = [float(x) for x in grid]
    fit = checkpoints >= budget / 10
    out["slopes"][method] = float(np.polyfit(np.log10(checkpoints[fit]),
                                             np.log10(curve.mean(0)[fit]), 1)[0])
    out["seconds"][method] = time.perf_counter() - t0
  out.update(checkpoints=checkpoints, jstar=j_star, theta_star=th_star, check=check)
  out["plot"] = _plot(out, os.path.join(workdir, "lqr_pg.png"))
  return out


def _plot(out, path):
  """Log-log plot of mean (over evaluation seeds) J* - J against trajectories; returns path."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig, ax = plt.subplots(figsize=(6, 4))
  for m, curve in out["curves"].items():
    ax.loglog(out["checkpoints"], curve.mean(0),
              label=f"{m} (step {out['steps'][m]:g}, slope {out['slopes'][m]:.2f})")
  ax.set_xlabel("trajectories sampled")
  ax.set_ylabel("J* - J (exact, mean over eval seeds)")
  ax.set_title("1-D LQR, Gaussian linear policy")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def markdown_table(out) -> str:
  """Per method: tuned step, final J*-J mean +- std over evaluation seeds, fitted slope."""
  n = next(iter(out["final"].values())).size
  rows = [f"| method | step grid | chosen step | final J*-J (mean ± std, {n} eval seeds) | "
          "median | log-log slope | seconds |", "|---|---|---|---|---|---|---|"]
  for m in out["final"]:
    f = out["final"][m]
    rows.append(f"| {m} | {', '.join(f'{x:g}' for x in out['grids'][m])} | {out['steps'][m]:g} | "
                f"{f.mean():.3g} ± {f.std():.2g} | {np.median(f):.3g} | {out['slopes'][m]:.2f} | "
                f"{out['seconds'][m]:.1f} |")
  mean, se, j0 = out["check"]
  rows.append(f"\nJ* = {out['jstar']:.5f} at theta* = {out['theta_star']:.4f} (H = 20). "
              f"Toy check at theta_0: rollout mean return {mean:.3f} ± {se:.3f} (4000 rollouts) "
              f"vs exact J_H {j0:.3f}.")
  return "\n".join(rows)


def write_metrics(out, path) -> str:
  """Writes the numbers of `run_all`'s result as JSON to `path`; returns path."""
  import json  # pylint: disable=import-outside-toplevel
  data = {
      "jstar": out["jstar"], "theta_star": out["theta_star"], "grids": out["grids"],
      "chosen_step": out["steps"], "slope": out["slopes"],
      "final_gap": {m: [float(x) for x in v] for m, v in out["final"].items()},
      "checkpoints": [int(c) for c in out["checkpoints"]],
      "mean_gap_curve": {m: [float(x) for x in v.mean(0)] for m, v in out["curves"].items()},
  }
  with open(path, "w") as f:
    json.dump(data, f, indent=1)
  return path


def fmt(out, method) -> str:
  """'mean ± std' of `method`'s final gap over evaluation seeds."""
  f = out["final"][method]
  return f"{f.mean():.3g} ± {f.std():.2g}"
