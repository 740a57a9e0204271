"""CartPole toy of the npg_igt and harpg papers, and the driver that runs both toys for both keys.

CartPole (Fatkhullin, Barakat, Kireeva, He, ICML 2023; set-up from the authors' experiment script
`run_PG.py`: CartPole-v1 cut at 200 steps, discount 0.99): gymnax CartPole-v1 through
`pgx_lab.envs.gymnax_adapter.GymnaxEnv` (no auto-reset; the adapter's `step` is called inside the
jitted scan), rolled out for H = 200 steps with the steps after termination masked (state frozen,
reward 0, log-prob masked). Policy: softmax over the two actions with logits (0, w.s + b), i.e.
linear in the observation, theta = (w [4], b) [5], started at 0 (the uniform policy). The authors'
code uses a softmax MLP [32, 32] (tanh); the linear policy is the spec's (Sec. 1(d)) and keeps a
full run within minutes on a CPU. No baseline (the authors fit a linear-feature baseline).

Objective and score: J(theta) = E[sum_{t<200} 0.99^t r_t] with r_t = 1 per step before
termination, so J* = sum_{t<200} 0.99^t = (1 - 0.99^200) / 0.01 = 86.60, the maximum return of the
horizon (a policy that never drops the pole; a deterministic linear policy can do that, and the
softmax approaches it as ||theta|| grows). J(theta) is
estimated by Monte Carlo: EVAL_EPISODES fresh evaluation rollouts per scored iterate; J* - J >= 0
holds episode by episode.

Batches (the paper's experiments, from `run_PG.py` and its README): a batch of PAPER_BATCH_STEPS =
5000 env steps per gradient (the README's CartPole command; the script's default is 1000) and
PAPER_HESSIAN_STEPS = 32 env steps for the Hessian sample of (N)-HARPG (the script's default).
garage collects whole episodes until it has that many steps; here a batch is a fixed number of
whole trajectories, ceil(steps / H): 25 + 1 on CartPole (H = 200), 250 + 2 on the LQR (H = 20).
Which batch sizes the paper's figures used was not read (its experiment section was not reachable
here): **(unconfirmed)**, the values are the code's.
"""

import math
import os
from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

from experiments.papers import _lqr_pg as base
from pgx_lab.envs import lqr
from pgx_lab.envs.gymnax_adapter import GymnaxEnv

H, GAMMA = 200, 0.99
J_STAR = (1.0 - GAMMA**H) / (1.0 - GAMMA)
EVAL_EPISODES = 16
PAPER_BATCH_STEPS, PAPER_HESSIAN_STEPS = 5000, 32


def paper_batches(horizon: int):
  """(batch, hessian_batch) in whole trajectories of `horizon` steps: ceil(5000 / H),
  ceil(32 / H)."""
  return math.ceil(PAPER_BATCH_STEPS / horizon), math.ceil(PAPER_HESSIAN_STEPS / horizon)


def prob_right(theta, obs):
  """pi(a = 1 | obs) = sigmoid(w.obs + b) (softmax over logits (0, w.obs + b)); theta [5], obs
  [..., 4] -> [...]."""
  return jax.nn.sigmoid(obs @ theta[:4] + theta[4])


def logp(theta, obs, acts):
  """log pi(acts | obs): theta [5], obs [..., 4], acts [...] int in {0, 1} -> [...]."""
  z = obs @ theta[:4] + theta[4]
  return jnp.where(acts == 1, jax.nn.log_sigmoid(z), jax.nn.log_sigmoid(-z))


def rollout(key, theta, env=None, env_params=None):
  """One H-step CartPole trajectory under theta [5]. Returns obs [H, 4] (the observation each
  action was taken in), acts [H] int32, rewards [H], mask [H] float32 (1 until the step that
  terminates, inclusive)."""
  env = GymnaxEnv("CartPole-v1") if env is None else env
  env_params = env.default_params() if env_params is None else env_params
  k_reset, k_u = jax.random.split(key)
  obs0, state0 = env.reset(k_reset, env_params)
  uniforms = jax.random.uniform(k_u, (H,))

  def step(carry, u):
    obs, state, alive = carry
    act = (u < prob_right(theta, obs)).astype(jnp.int32)
    out = env.step(k_reset, state, act, env_params)   # CartPole's dynamics use no randomness
    state = jax.tree.map(lambda new, old: jnp.where(alive, new, old), out.state, state)
    nxt = jnp.where(alive, out.obs, obs)
    return (nxt, state, alive & ~out.terminated), (obs, act, out.reward * alive, alive)

  _, (obs, acts, rew, alive) = jax.lax.scan(step, (obs0, state0, jnp.array(True)), uniforms)
  return obs, acts, rew, alive.astype(jnp.float32)


def discounted_return(rew):
  """sum_t GAMMA^t r_t over the last axis: rew [..., H] -> [...]."""
  return jnp.sum(rew * GAMMA ** jnp.arange(rew.shape[-1]), -1)


def cartpole_toy(grids: Dict[str, tuple]) -> base.Toy:
  """The CartPole toy as a `_lqr_pg.Toy` with step grids `grids` (Monte Carlo gap)."""
  env = GymnaxEnv("CartPole-v1")
  env_params = env.default_params()
  roll = lambda k, th: rollout(k, th, env, env_params)

  def sample(theta, key, n):
    obs, acts, rew, mask = jax.vmap(roll, (0, None))(jax.random.split(key, n), theta)
    return (lambda th: logp(th, obs, acts)), rew, mask

  @jax.jit
  def _gap(thetas, key):                      # thetas [N, 5] -> [N]
    keys = jax.random.split(key, EVAL_EPISODES)
    rets = jax.vmap(lambda th: jax.vmap(lambda k: discounted_return(roll(k, th)[2]))(keys))(thetas)
    return J_STAR - rets.mean(-1)

  def gap(thetas, key):                       # padded to a multiple of 512 rows: one compile
    flat = np.asarray(thetas, np.float32).reshape(-1, thetas.shape[-1])
    pad = np.zeros((-len(flat) % 512, flat.shape[1]), np.float32)
    out = np.asarray(_gap(np.concatenate([flat, pad]), key), np.float64)[:len(flat)]
    return out.reshape(thetas.shape[:-1])

  return base.Toy("CartPole-v1 (H = 200), linear softmax policy", np.zeros(5, np.float32), GAMMA,
                  dict(grids), sample, gap)


# ------------------------------------------------------------------------------------ driver
_UNNORM, _NORM = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1), (0.1, 0.3, 1.0, 3.0, 10.0)
CARTPOLE_GRIDS = {"reinforce": _UNNORM, "gpomdp": _UNNORM, "npg_igt": _NORM, "harpg": _UNNORM,
                  "nharpg": _NORM}
_ALL = (0, 1, 2, 3, 4)
_LQR_B, _LQR_HB = paper_batches(20)
_CP_B, _CP_HB = paper_batches(H)
# Setups per size: (toy, cfg). "lqr_single" is the theory's one-trajectory regime (the earlier
# LQR runs, unchanged); "lqr_batch" and "cartpole" use the paper's experiment batches.
SETUPS = {
    "small": {
        "lqr_batch": ("lqr", dict(budget=10 * _LQR_B, batch=_LQR_B, hessian_batch=_LQR_HB,
                                  tune_seeds=2, eval_seeds=3, grid=(2, 3))),
        "cartpole": ("cartpole", dict(budget=8 * _CP_B, batch=_CP_B, hessian_batch=_CP_HB,
                                      tune_seeds=2, eval_seeds=3, grid=(2, 3), tail_points=2)),
    },
    "full": {
        "lqr_single": ("lqr1", dict(budget=20000, tune_seeds=10, eval_seeds=20, grid=_ALL)),
        "lqr_batch": ("lqr", dict(budget=20000, batch=_LQR_B, hessian_batch=_LQR_HB,
                                  tune_seeds=10, eval_seeds=20, grid=_ALL)),
        "cartpole": ("cartpole", dict(budget=5000, batch=_CP_B, hessian_batch=_CP_HB,
                                      tune_seeds=5, eval_seeds=10, grid=_ALL, tail_points=10)),
    },
}
# Diagnostics of N-HARPG (full size, not in any rule), plotted dashed on the panel of the setup
# they vary: "_hb", the Hessian sample as large as the gradient batch (every trajectory charged);
# "_hvp", the paper's Hessian batch with the Hessian-vector product of the GPOMDP surrogate alone
# (biased; close to what the authors' code computes, as read: see `_lqr_pg.make_run`).
DIAGNOSTICS = {
    "lqr_batch_hb": ("lqr", dict(SETUPS["full"]["lqr_batch"][1], hessian_batch=_LQR_B)),
    "cartpole_hb": ("cartpole", dict(SETUPS["full"]["cartpole"][1], hessian_batch=_CP_B)),
    "lqr_batch_hvp": ("lqr", dict(SETUPS["full"]["lqr_batch"][1], hessian_terms="hvp")),
    "cartpole_hvp": ("cartpole", dict(SETUPS["full"]["cartpole"][1], hessian_terms="hvp")),
}
TITLES = {"lqr_single": "1-D LQR, one trajectory per sample (theory's regime)",
          "lqr_batch": "1-D LQR, paper's batches", "cartpole": "CartPole, paper's batches",
          "lqr_batch_hb": "1-D LQR, Hessian batch = gradient batch (diagnostic)",
          "cartpole_hb": "CartPole, Hessian batch = gradient batch (diagnostic)",
          "lqr_batch_hvp": "1-D LQR, paper's batches, surrogate HVP only (diagnostic)",
          "cartpole_hvp": "CartPole, paper's batches, surrogate HVP only (diagnostic)"}


def _toy(kind):
  """The Toy of a SETUPS kind: "cartpole", "lqr" (batch grids) or "lqr1" (one-trajectory grids)."""
  if kind == "cartpole":
    return cartpole_toy(CARTPOLE_GRIDS)
  return base.lqr_toy(grids=base.GRIDS if kind == "lqr1" else base.BATCH_GRIDS)


def run_toys(size: str, methods=base.METHODS, diagnostics=()) -> Dict[str, Dict]:
  """Runs `methods` on every setup of SETUPS[size], then N-HARPG alone on the named DIAGNOSTICS
  (full size only); returns {setup: `_lqr_pg.run_setup` result}."""
  if size not in SETUPS:
    raise ValueError(f"`size` must be one of {tuple(SETUPS)}, got {size!r}.")
  unknown = set(diagnostics) - set(DIAGNOSTICS)
  if unknown:
    raise ValueError(f"`diagnostics` must name entries of {tuple(DIAGNOSTICS)}, got {unknown}.")
  outs = {name: base.run_setup(_toy(kind), cfg, methods)
          for name, (kind, cfg) in SETUPS[size].items()}
  if size == "full":
    for name in diagnostics:
      kind, cfg = DIAGNOSTICS[name]
      outs[name] = base.run_setup(_toy(kind), cfg, ("nharpg",))
  return outs


def setup_line(name, out) -> str:
  """One line naming a setup's budget and batches."""
  c = out["cfg"]
  return (f"{TITLES[name]}: {c['budget']} trajectories, gradient batch {c.get('batch', 1)}, "
          f"Hessian batch {c.get('hessian_batch', 1)} trajectories, {c['tune_seeds']} tuning + "
          f"{c['eval_seeds']} evaluation seeds")


def tables(outs) -> str:
  """Markdown: per setup a title line and `_lqr_pg.markdown_table`, then the toys' J*."""
  parts = []
  for name, out in outs.items():
    parts += [f"**{setup_line(name, out)}**", "", base.markdown_table(out), ""]
  th_star, j_star = base.optimum(lqr.harpg_toy_params())
  check = ""
  if "lqr_single" in outs:                    # full size: a check that rollouts match exact J
    mean, se, j0 = base.toy_check()
    check = (f"; rollout mean return at theta_0 {mean:.3f} ± {se:.3f} (4000 rollouts) vs exact "
             f"J_H {j0:.3f}")
  parts.append(f"LQR: J* = {j_star:.5f} at theta* = {th_star:.4f} (H = 20, exact){check}. "
               f"CartPole: J* = {J_STAR:.2f} (sum of 0.99^t over 200 steps), J by Monte Carlo "
               f"over {EVAL_EPISODES} evaluation episodes per scored iterate.")
  return "\n".join(parts)


def save(outs, workdir, metrics_name):
  """Writes the log-log plot (one panel per setup) and the metrics JSON; returns their paths."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from experiments.papers import save_artifacts  # pylint: disable=import-outside-toplevel
  os.makedirs(workdir, exist_ok=True)
  panels = [n for n in outs if n not in DIAGNOSTICS]
  fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
  metrics = {}
  for name, out in outs.items():
    diag = name in DIAGNOSTICS
    ax = axes[0][panels.index(name.rsplit("_", 1)[0] if diag else name)]
    for m, curve in out["curves"].items():
      extra = ""
      if diag:
        extra = (", surrogate HVP only" if out["cfg"].get("hessian_terms") == "hvp" else
                 f", Hessian batch {out['cfg']['hessian_batch']}")
      ax.loglog(out["checkpoints"], np.maximum(curve.mean(0), 1e-9),
                (":" if "hvp" in name else "--") if diag else "-",
                label=f"{m}{extra} (step {out['steps'][m]:g}, slope {out['slopes'][m]:.2f})")
    if diag:
      ax.legend(fontsize=7)
      metrics[name] = {"cfg": out["cfg"], "chosen_step": out["steps"], "slope": out["slopes"],
                       "final_gap": {m: [float(x) for x in v] for m, v in out["final"].items()}}
      continue
    ax.set_xlabel("trajectories sampled")
    ax.set_ylabel("J* - J (mean over eval seeds)")
    ax.set_title(TITLES[name], fontsize=9)
    ax.legend(fontsize=7)
    metrics[name] = {
        "cfg": out["cfg"], "grids": out["grids"], "chosen_step": out["steps"],
        "slope": out["slopes"], "checkpoints": [int(c) for c in out["checkpoints"]],
        "final_gap": {m: [float(x) for x in v] for m, v in out["final"].items()},
        "mean_gap_curve": {m: [float(x) for x in v.mean(0)] for m, v in out["curves"].items()}}
  fig.tight_layout()
  return save_artifacts(workdir, fig, metrics, plot_name="pg_toys.png", metrics_name=metrics_name)
