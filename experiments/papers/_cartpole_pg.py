"""CartPole toy of the npg_igt and harpg papers, and the driver that runs both toys for both keys.

CartPole (Fatkhullin, Barakat, Kireeva, He, ICML 2023; set-up from the authors' experiment script
`run_PG.py`: CartPole-v1 cut at 200 steps, discount 0.99): gymnax CartPole-v1 through
`pgx_lab.envs.gymnax_adapter.GymnaxEnv` (no auto-reset; the adapter's `step` is called inside the
jitted scan), rolled out for H = 200 steps with the steps after termination masked (state frozen,
reward 0, log-prob masked). Two policies, both a softmax over the two actions:
  * "mlp", the authors' (`run_PG.py` builds SoftmaxMLPPolicy(hidden_sizes=[32, 32], tanh) for
    CartPole and offers no other; the authors' README says the repository "hosts the code for the
    experiments section" of the paper): a [32, 32] tanh MLP, 1282 parameters, one fixed
    initialisation (`mlp_init`), with garage's LinearFeatureBaseline (`run_PG.py`:
    `LinearFeatureBaseline(env_spec)`, neural_baseline=False; the authors' `_train_once` predicts
    with the previous fit and refits after the step): a ridge regression of the per-step returns
    on [o, o^2, t/100, (t/100)^2, (t/100)^3, 1] (`baseline_features`, `_lqr_pg.fit_baseline`),
    subtracted as gamma^t b(s_t, t) from the GPOMDP weights (`_lqr_pg.shaped_rewards`);
  * "linear", the spec's (Sec. 1(d)): logits (0, w.s + b), theta = (w [4], b) [5] at 0, no baseline.
The paper's own text (its experiment section) was not reachable here, so that its figures use the
MLP is read from the authors' code and README, not from the paper **(unconfirmed in the text)**.
The estimators are the project's: GPOMDP with absolute discounts gamma^t (unbiased for J), where
garage's VPG loss uses per-step returns without gamma^t and the mean over steps (a different scale:
step sizes are tuned on grids anyway).

Objective and score: J(theta) = E[sum_{t<200} 0.99^t r_t] with r_t = 1 per step before
termination, so J* = sum_{t<200} 0.99^t = (1 - 0.99^200) / 0.01 = 86.60, the maximum return of the
horizon (a policy that never drops the pole). J(theta) is estimated by Monte Carlo: EVAL_EPISODES
fresh evaluation rollouts per scored iterate; J* - J >= 0 holds episode by episode (clipped at 0
against float32 rounding), and a policy that keeps the pole up on every evaluation episode scores
exactly 0, so final gaps can tie at 0.

Batches (the paper's experiments, from `run_PG.py` and its README): a batch of PAPER_BATCH_STEPS =
5000 env steps per gradient (the README's CartPole command; the script's default is 1000) and
PAPER_HESSIAN_STEPS = 32 env steps for the Hessian sample of (N)-HARPG (the script's default).
garage collects whole episodes until it has that many steps; here a batch is a fixed number of
whole trajectories, ceil(steps / H): 25 + 1 on CartPole (H = 200), 250 + 2 on the LQR (H = 20).
Which batch sizes the paper's figures used is not in the code we read: **(unconfirmed)**, the
values are the code's. (The paper has no LQR experiment; the LQR toy is the spec's.)
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


def linear_logit(theta, obs):
  """Linear policy: z = w.obs + b, the logit of action 1 against action 0 (logits (0, z));
  theta [5] = (w [4], b), obs [..., 4] -> [...]."""
  return obs @ theta[:4] + theta[4]


def prob_right(theta, obs):
  """pi(a = 1 | obs) = sigmoid(w.obs + b) of the linear policy; theta [5], obs [..., 4] -> [...]."""
  return jax.nn.sigmoid(linear_logit(theta, obs))


def logp(theta, obs, acts, logit_fn=linear_logit):
  """log pi(acts | obs) of a two-action softmax with logit difference z = logit_fn(theta, obs):
  log sigmoid(z) for action 1, log sigmoid(-z) for 0. obs [..., 4], acts [...] int -> [...]."""
  z = logit_fn(theta, obs)
  return jnp.where(acts == 1, jax.nn.log_sigmoid(z), jax.nn.log_sigmoid(-z))


# The authors' CartPole policy (`run_PG.py`): garage SoftmaxMLPPolicy, hidden [32, 32], tanh, no
# output nonlinearity, softmax over the 2 actions. Weights Glorot-normal, biases 0 (garage's
# MLPModule defaults); one fixed initialisation for every seed (`run_PG.py` fixes torch_seed=11).
MLP_SIZES = (4, 32, 32, 2)
_MLP_SHAPES = [(a, b) for a, b in zip(MLP_SIZES[:-1], MLP_SIZES[1:])]
MLP_DIM = sum(a * b + b for a, b in _MLP_SHAPES)                                   # 1282


def mlp_init(key) -> np.ndarray:
  """Flat parameter vector [MLP_DIM] of the MLP: per layer W [fan_in, fan_out] ~ N(0, 2 /
  (fan_in + fan_out)), then b = 0, layers in order."""
  parts = []
  for k, (a, b) in zip(jax.random.split(key, len(_MLP_SHAPES)), _MLP_SHAPES):
    parts += [np.asarray(jax.random.normal(k, (a * b,)), np.float32) * math.sqrt(2.0 / (a + b)),
              np.zeros(b, np.float32)]
  return np.concatenate(parts)


def mlp_logit(theta, obs):
  """MLP policy: z = l_1 - l_0 of the logits l = W3 tanh(W2 tanh(W1 obs + b1) + b2) + b3, so
  pi = softmax(l) = (sigmoid(-z), sigmoid(z)); theta [MLP_DIM] flat, obs [..., 4] -> [...]."""
  h, i = obs, 0
  for layer, (a, b) in enumerate(_MLP_SHAPES):
    w, bias = theta[i:i + a * b].reshape(a, b), theta[i + a * b:i + a * b + b]
    i += a * b + b
    h = h @ w + bias
    if layer < len(_MLP_SHAPES) - 1:
      h = jnp.tanh(h)
  return h[..., 1] - h[..., 0]


BASELINE_DIM = 12


def baseline_features(obs):
  """garage's LinearFeatureBaseline features of every step: [o, o^2, a, a^2, a^3, 1] with o the
  observation clipped to [-10, 10] and a = h / 100 the time index; obs [..., H, 4] ->
  [..., H, 12]."""
  o = jnp.clip(obs, -10.0, 10.0)
  al = jnp.broadcast_to((jnp.arange(obs.shape[-2], dtype=obs.dtype) / 100.0)[:, None],
                        obs.shape[:-1] + (1,))
  return jnp.concatenate([o, o * o, al, al**2, al**3, jnp.ones_like(al)], -1)


def rollout(key, theta, env=None, env_params=None, logit_fn=linear_logit):
  """One H-step CartPole trajectory under theta (the parameters of `logit_fn`: [5] linear,
  [MLP_DIM] MLP). Returns obs [H, 4] (the observation each action was taken in), acts [H] int32,
  rewards [H], mask [H] float32 (1 until the step that terminates, inclusive)."""
  env = GymnaxEnv("CartPole-v1") if env is None else env
  env_params = env.default_params() if env_params is None else env_params
  k_reset, k_u = jax.random.split(key)
  obs0, state0 = env.reset(k_reset, env_params)
  uniforms = jax.random.uniform(k_u, (H,))

  def step(carry, u):
    obs, state, alive = carry
    act = (u < jax.nn.sigmoid(logit_fn(theta, obs))).astype(jnp.int32)
    out = env.step(k_reset, state, act, env_params)   # CartPole's dynamics use no randomness
    state = jax.tree.map(lambda new, old: jnp.where(alive, new, old), out.state, state)
    nxt = jnp.where(alive, out.obs, obs)
    return (nxt, state, alive & ~out.terminated), (obs, act, out.reward * alive, alive)

  _, (obs, acts, rew, alive) = jax.lax.scan(step, (obs0, state0, jnp.array(True)), uniforms)
  return obs, acts, rew, alive.astype(jnp.float32)


def discounted_return(rew):
  """sum_t GAMMA^t r_t over the last axis: rew [..., H] -> [...]."""
  return jnp.sum(rew * GAMMA ** jnp.arange(rew.shape[-1]), -1)


def cartpole_toy(grids: Dict[str, tuple], policy: str = "linear") -> base.Toy:
  """The CartPole toy as a `_lqr_pg.Toy` with step grids `grids` (Monte Carlo gap). policy:
  "linear" (theta [5] at 0, no baseline) or "mlp" (the authors' [32, 32] tanh softmax MLP at
  `mlp_init(PRNGKey(11))` with garage's linear feature baseline)."""
  if policy not in ("linear", "mlp"):
    raise ValueError(f"`policy` must be 'linear' or 'mlp', got {policy!r}.")
  logit_fn = mlp_logit if policy == "mlp" else linear_logit
  env = GymnaxEnv("CartPole-v1")
  env_params = env.default_params()
  roll = lambda k, th: rollout(k, th, env, env_params, logit_fn)

  def sample(theta, key, n):
    obs, acts, rew, mask = jax.vmap(roll, (0, None))(jax.random.split(key, n), theta)
    out = ((lambda th: logp(th, obs, acts, logit_fn)), rew, mask)
    return out + (baseline_features(obs),) if policy == "mlp" else out

  @jax.jit
  def _gap(thetas, key):                      # thetas [N, P] -> [N]
    keys = jax.random.split(key, EVAL_EPISODES)
    rets = jax.vmap(lambda th: jax.vmap(lambda k: discounted_return(roll(k, th)[2]))(keys))(thetas)
    return jnp.maximum(J_STAR - rets.mean(-1), 0.0)

  def gap(thetas, key):                       # padded to a multiple of 512 rows: one compile
    flat = np.asarray(thetas, np.float32).reshape(-1, thetas.shape[-1])
    pad = np.zeros((-len(flat) % 512, flat.shape[1]), np.float32)
    out = np.asarray(_gap(np.concatenate([flat, pad]), key), np.float64)[:len(flat)]
    return out.reshape(thetas.shape[:-1])

  if policy == "mlp":
    return base.Toy("CartPole-v1 (H = 200), [32, 32] tanh softmax MLP + linear feature baseline",
                    mlp_init(jax.random.PRNGKey(11)), GAMMA, dict(grids), sample, gap,
                    BASELINE_DIM)
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
# LQR runs, unchanged); "lqr_batch", "cartpole" (linear) and "cartpole_mlp" (the authors' policy
# and baseline) use the paper's experiment batches. The MLP runs 5 tuning + 10 evaluation seeds,
# its diagnostics 5 + 5 (evaluation seeds cut first, to keep a full run within ~5 minutes on a
# CPU); `small` runs the two setups of the rules only, a few iterations each.
_MLP_FULL = dict(budget=5000, batch=_CP_B, hessian_batch=_CP_HB, tune_seeds=5, eval_seeds=10,
                 grid=_ALL, tail_points=10)
SETUPS = {
    "small": {
        "lqr_batch": ("lqr", dict(budget=10 * _LQR_B, batch=_LQR_B, hessian_batch=_LQR_HB,
                                  tune_seeds=2, eval_seeds=3, grid=(2, 3))),
        "cartpole_mlp": ("cartpole_mlp", dict(budget=4 * _CP_B + 3 * _CP_HB, batch=_CP_B,
                                              hessian_batch=_CP_HB, tune_seeds=1, eval_seeds=2,
                                              grid=(1,), tail_points=2)),
    },
    "full": {
        "lqr_single": ("lqr1", dict(budget=20000, tune_seeds=10, eval_seeds=20, grid=_ALL)),
        "lqr_batch": ("lqr", dict(budget=20000, batch=_LQR_B, hessian_batch=_LQR_HB,
                                  tune_seeds=10, eval_seeds=20, grid=_ALL)),
        "cartpole": ("cartpole", dict(budget=5000, batch=_CP_B, hessian_batch=_CP_HB,
                                      tune_seeds=5, eval_seeds=10, grid=_ALL, tail_points=10)),
        "cartpole_mlp": ("cartpole_mlp", _MLP_FULL),
    },
}
# Diagnostics of N-HARPG (full size, not in any rule; on the LQR and the MLP CartPole, the setups of
# the rules), plotted dashed on the panel of the setup they vary: "_hb", the Hessian sample as large as the gradient batch (every trajectory charged);
# "_hvp", the paper's Hessian batch with the Hessian-vector product of the GPOMDP surrogate alone
# (biased; close to what the authors' code computes, as read: see `_lqr_pg.make_run`).
DIAGNOSTICS = {
    "lqr_batch_hb": ("lqr", dict(SETUPS["full"]["lqr_batch"][1], hessian_batch=_LQR_B)),
    "cartpole_mlp_hb": ("cartpole_mlp", dict(_MLP_FULL, hessian_batch=_CP_B, eval_seeds=5)),
    "lqr_batch_hvp": ("lqr", dict(SETUPS["full"]["lqr_batch"][1], hessian_terms="hvp")),
    "cartpole_mlp_hvp": ("cartpole_mlp", dict(_MLP_FULL, hessian_terms="hvp", eval_seeds=5)),
}
TITLES = {"lqr_single": "1-D LQR, one trajectory per sample (theory's regime)",
          "lqr_batch": "1-D LQR, paper's batches", "cartpole": "CartPole linear, paper's batches",
          "cartpole_mlp": "CartPole [32, 32] MLP + linear baseline (authors'), paper's batches",
          "lqr_batch_hb": "1-D LQR, Hessian batch = gradient batch (diagnostic)",
          "cartpole_mlp_hb": "CartPole MLP, Hessian batch = gradient batch (diagnostic)",
          "lqr_batch_hvp": "1-D LQR, paper's batches, surrogate HVP only (diagnostic)",
          "cartpole_mlp_hvp": "CartPole MLP, paper's batches, surrogate HVP only (diagnostic)"}


def _toy(kind):
  """The Toy of a SETUPS kind: "cartpole" (linear), "cartpole_mlp", "lqr" (batch grids) or
  "lqr1" (one-trajectory grids)."""
  if kind.startswith("cartpole"):
    return cartpole_toy(CARTPOLE_GRIDS, "mlp" if kind == "cartpole_mlp" else "linear")
  return base.lqr_toy(grids=base.GRIDS if kind == "lqr1" else base.BATCH_GRIDS)


def run_toys(size: str, methods=base.METHODS, diagnostics=(), setup_methods=None
             ) -> Dict[str, Dict]:
  """Runs `methods` on every setup of SETUPS[size] (`setup_methods`: {setup: methods} overrides
  for some setups), then N-HARPG alone on the named DIAGNOSTICS (full size only); returns
  {setup: `_lqr_pg.run_setup` result}."""
  if size not in SETUPS:
    raise ValueError(f"`size` must be one of {tuple(SETUPS)}, got {size!r}.")
  unknown = set(diagnostics) - set(DIAGNOSTICS)
  if unknown:
    raise ValueError(f"`diagnostics` must name entries of {tuple(DIAGNOSTICS)}, got {unknown}.")
  setup_methods = dict(setup_methods or {})
  outs = {name: base.run_setup(_toy(kind), cfg, setup_methods.get(name, methods))
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


def descriptive_tail(outs, names, part) -> str:
  """The part of a claim statement outside the rule: the MLP CartPole run-mean gaps of the
  methods in `names` ({method: display name}) and `part(label, out)` for the one-trajectory LQR
  and the linear CartPole, where they ran."""
  mlp = outs["cartpole_mlp"]
  tail = ("; MLP CartPole run-mean J*-J (descriptive, not in the rule): " + ", ".join(
      f"{names[m]} {base.fmt(mlp, m, run_mean=True)}" for m in mlp["final"]))
  extra = [part(label, outs[s]) for s, label in (("lqr_single", "one-trajectory LQR"),
                                                 ("cartpole", "linear CartPole")) if s in outs]
  return tail + ("; not in the rule, " + "; ".join(extra) if extra else "")


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


_COLORS = dict(zip(base.METHODS, ("C0", "C1", "C2", "C3", "C4")))   # one colour per method


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
      mean = curve.mean(0)
      ax.loglog(out["checkpoints"], np.where(mean > 0, mean, np.nan),
                (":" if "hvp" in name else "--") if diag else "-", color=_COLORS[m],
                label=f"{m}{extra} (step {out['steps'][m]:g}, slope {out['slopes'][m]:.2f})")
    if diag:
      ax.legend(fontsize=7)
      metrics[name] = {"cfg": out["cfg"], "chosen_step": out["steps"], "slope": out["slopes"],
                       "final_gap": {m: [float(x) for x in v] for m, v in out["final"].items()}}
      continue
    ax.set_xlabel("trajectories sampled")
    ax.set_ylabel("J* - J (mean over eval seeds; 0 not drawn)")
    ax.set_title(TITLES[name], fontsize=9)
    ax.legend(fontsize=7)
    metrics[name] = {
        "cfg": out["cfg"], "grids": out["grids"], "chosen_step": out["steps"],
        "slope": out["slopes"], "checkpoints": [int(c) for c in out["checkpoints"]],
        "final_gap": {m: [float(x) for x in v] for m, v in out["final"].items()},
        "run_mean_gap": {m: [float(x) for x in v.mean(1)] for m, v in out["curves"].items()},
        "mean_gap_curve": {m: [float(x) for x in v.mean(0)] for m, v in out["curves"].items()}}
  fig.tight_layout()
  return save_artifacts(workdir, fig, metrics, plot_name="pg_toys.png", metrics_name=metrics_name)
