r"""A-LoL (Baheti et al., ICLR 2024, "Leftover Lunch: Advantage-based Offline RL for LMs").

Claim (PAPERS.md, row alol): on an offline token-task dataset with many low-reward responses,
every A-LoL variant (seq ratio, token ratio, ref-free, KL) ends with higher reward than NLL and
wBC on the same data; dropping the A > 0 filter makes A-LoL worse.

The toy (a token task, not the spec's K = 50 bandit). Per seed: C prompts of the `reverse` token
task (pgx_lab.envs.token_tasks, strings of L digits over S symbols) with positional partial-credit
reward (the fraction of the L answer positions that are right). A response is L digit tokens then
EOS; the policy is tabular and factorised over positions, theta[C, L, S], so the EXACT expected
reward is mean_{c,t} pi_t(target_{c,t} | c) (the task's partial reward is hits / L when the answer
has length L). The dataset has K responses per prompt: a fraction `bad` from a bad policy (per
position a fixed wrong digit w.p. 0.8, else uniform) and the rest from a decent one (the right
digit w.p. 0.6, else a uniform wrong one), so most responses have low reward (bad share 0.6; the
full size also reports 0.3 and 0.8, outside the claim). Rewards of the data
come from the task's own `reward`. Then, as in the paper:
  pi_ref    = the NLL (SFT) model: theta trained from 0 by NLL on all the data;
  V_ref(x)  = pi_ref's exact expected reward at prompt x (the spec's toy; the paper's value head,
              pgx_lab.train.value_fit, estimates this from greedy outputs on held-out prompts,
              which has no meaning for a tabular policy over fixed prompts);
  A_i       = R_i - V_ref(x_i), computed once; priority sampling over A > 0
              (pgx_lab.selection.priority).
Every method starts at pi_ref and takes the same number of Adam steps on minibatches:
  nll, wbc, rgold, rlol           uniform minibatches, `offline.nll / wbc / rgold / rlol`
                                  (u = 0.1, eps = 0.9; rgold and rlol reported, not in the claim);
  alol, alol_seq, alol_ref_free,  priority-sampled minibatches (p proportional to A^+),
  alol_kl                         `offline.alol / alol_seq / alol_ref_free / alol_kl (beta 0.1)`;
  alol_no_filter                  uniform minibatches over ALL data and the A-LoL loss with
                                  negative advantages kept (`offline.alol(positive=False)`);
  alol_uniform                    (reported, not in the claim) uniform minibatches, A clamped at 0:
                                  the code's `sampling_strategy=None`.
Log-probs are summed over tokens (the paper's code). Seeds are vmapped, training runs are one
`lax.scan` under jit. The claim compares the seed means of the final exact expected reward.
"""

import os
import time

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from experiments.papers import Claim, save_artifacts  # noqa: E402
from pgx_lab.envs.token_tasks import make_task  # noqa: E402
from pgx_lab.envs.token_tasks import vocab  # noqa: E402
from pgx_lab.estimators import offline  # noqa: E402
from pgx_lab.selection import priority  # noqa: E402
from pgx_lab.types import SequenceBatch  # noqa: E402

CONFIGS = {
    "small": dict(seeds=3, prompts=16, per_prompt=16, length=3, symbols=4, steps=300,
                  batch=32, eval_every=30, bad=0.6, sweep=()),
    "full": dict(seeds=8, prompts=64, per_prompt=32, length=4, symbols=5, steps=1500,
                 batch=64, eval_every=75, bad=0.6, sweep=(0.3, 0.8)),
}
P_GOOD, P_BAD = 0.6, 0.8
LR, REF_STEPS = 0.05, 400
VARIANTS = ("alol", "alol_seq", "alol_ref_free", "alol_kl")
BASELINES = ("nll", "wbc")
METHODS = VARIANTS + BASELINES + ("rgold", "rlol", "alol_no_filter", "alol_uniform")
# method -> (estimator, sampling): "priority" over A > 0, or "uniform" over all data.
ESTIMATORS = {
    "nll": (offline.nll(), "uniform"),
    "wbc": (offline.wbc(), "uniform"),
    "rgold": (offline.rgold(0.1), "uniform"),
    "rlol": (offline.rlol(0.9), "uniform"),
    "alol": (offline.alol(0.9), "priority"),
    "alol_seq": (offline.alol_seq(0.9), "priority"),
    "alol_ref_free": (offline.alol_ref_free(), "priority"),
    "alol_kl": (offline.alol_kl(0.1), "priority"),
    "alol_no_filter": (offline.alol(0.9, positive=False), "uniform"),
    "alol_uniform": (offline.alol(0.9), "uniform"),
}


def make_data(key, cfg):
  """One offline dataset. Returns a dict: target [C, L] digit ids, ctx [N], y [N, L] digit ids,
  rewards [N] (from the task), rewards_check [N] (hits / L, the formula of `expected_reward`)."""
  c, k, n_len, s = cfg["prompts"], cfg["per_prompt"], cfg["length"], cfg["symbols"]
  task = make_task("reverse", min_difficulty=n_len, max_difficulty=n_len, num_symbols=s,
                   reward_type="partial")
  kp, kw, kg, kb, kr = jax.random.split(key, 5)
  prompts = task.sample_prompts(kp, c)
  target = prompts.target - vocab.DIGIT_0  # [C, L] in [0, S)
  # A fixed wrong digit per (prompt, position) for the bad policy.
  wrong = (target + jax.random.randint(kw, target.shape, 1, s)) % s
  ctx = jnp.repeat(jnp.arange(c), k)
  n_bad = int(round(cfg["bad"] * k))
  is_bad = jnp.tile(jnp.arange(k) < n_bad, c)
  tgt, wr = target[ctx], wrong[ctx]
  k1, k2 = jax.random.split(kg)
  other = (tgt + jax.random.randint(k1, tgt.shape, 1, s)) % s  # a uniform wrong digit
  good_y = jnp.where(jax.random.uniform(k2, tgt.shape) < P_GOOD, tgt, other)
  k3, k4 = jax.random.split(kb)
  bad_y = jnp.where(jax.random.uniform(k3, tgt.shape) < P_BAD, wr,
                    jax.random.randint(k4, tgt.shape, 0, s))
  y = jnp.where(is_bad[:, None], bad_y, good_y).astype(jnp.int32)
  reps = jax.tree.map(lambda a: a[ctx], prompts)
  response = jnp.concatenate([y + vocab.DIGIT_0, jnp.full((y.shape[0], 1), vocab.EOS)], axis=1)
  rewards = task.reward(reps, response, jnp.ones(response.shape, jnp.int32))
  return dict(target=target, ctx=ctx, y=y, rewards=rewards,
              rewards_check=jnp.mean((y == tgt).astype(jnp.float32), axis=1))


def token_logp(theta, ctx, y):
  """[B, L] log pi_t(y_t | x) of the tabular policy theta [C, L, S]."""
  lp = jax.nn.log_softmax(theta[ctx], axis=-1)
  return jnp.take_along_axis(lp, y[..., None], axis=-1)[..., 0]


def expected_reward(theta, target):
  """Exact expected partial-credit reward, per prompt [C] (mean_t pi_t(target_t | c))."""
  p = jax.nn.softmax(theta, axis=-1)
  return jnp.mean(jnp.take_along_axis(p, target[..., None], axis=-1)[..., 0], axis=-1)


def train(method, theta0, data, ref_logp_all, adv, probs, key, steps, cfg):
  """`steps` Adam steps of `method` from theta0; returns (theta, exact reward every eval_every)."""
  est, _ = ESTIMATORS[method]
  opt = optax.adam(LR)
  b = cfg["batch"]

  def loss_fn(theta, idx):
    batch = SequenceBatch(mask=jnp.ones((b, data["y"].shape[1])), ref_logp=ref_logp_all[idx],
                          rewards=data["rewards"][idx], advantages=adv[idx])
    return est(token_logp(theta, data["ctx"][idx], data["y"][idx]), batch)[0]

  def step(carry, k):
    theta, s = carry
    idx = priority.sample(k, probs, b)
    g = jax.grad(loss_fn)(theta, idx)
    u, s = opt.update(g, s, theta)
    return (optax.apply_updates(theta, u), s), None

  def chunk(carry, ks):
    carry, _ = jax.lax.scan(step, carry, ks)
    return carry, jnp.mean(expected_reward(carry[0], data["target"]))

  n_chunks = steps // cfg["eval_every"]
  keys = jax.random.split(key, n_chunks * cfg["eval_every"]).reshape(n_chunks, cfg["eval_every"],
                                                                      -1)
  (theta, _), curve = jax.lax.scan(chunk, (theta0, opt.init(theta0)), keys)
  return theta, curve


def one_seed(key, cfg):
  """Everything for one seed: returns dict of curves [n_chunks] per method and data statistics."""
  kd, kr, km = jax.random.split(key, 3)
  data = make_data(kd, cfg)
  n = data["y"].shape[0]
  shape = (cfg["prompts"], cfg["length"], cfg["symbols"])
  uniform = jnp.full((n,), 1.0 / n)
  zeros = jnp.zeros((n,))
  theta_ref, _ = train("nll", jnp.zeros(shape), data, jnp.zeros(data["y"].shape), zeros,
                       uniform, kr, REF_STEPS, cfg)
  ref_logp_all = token_logp(theta_ref, data["ctx"], data["y"])
  v_ref = expected_reward(theta_ref, data["target"])
  adv = data["rewards"] - v_ref[data["ctx"]]
  pri = priority.priority(adv)
  out = {"ref": jnp.mean(v_ref), "dropped_fraction": pri.dropped_fraction,
         "mean_reward_data": jnp.mean(data["rewards"]),
         "low_reward_fraction": jnp.mean((data["rewards"] < 0.5).astype(jnp.float32)),
         "reward_mismatch": jnp.max(jnp.abs(data["rewards"] - data["rewards_check"]))}
  for i, m in enumerate(METHODS):
    probs = pri.probs if ESTIMATORS[m][1] == "priority" else uniform
    _, curve = train(m, theta_ref, data, ref_logp_all, adv, probs, jax.random.fold_in(km, i),
                     cfg["steps"], cfg)
    out[m] = curve
  return out


def _run_seeds(cfg):
  """one_seed vmapped over cfg["seeds"] seeds under one jit; numpy results."""
  keys = jax.random.split(jax.random.PRNGKey(0), cfg["seeds"])
  res = jax.tree.map(np.asarray, jax.jit(jax.vmap(lambda k: one_seed(k, cfg)))(keys))
  if float(np.max(res["reward_mismatch"])) > 1e-6:
    raise RuntimeError("the task's partial reward differs from hits / L on the data: the exact "
                       "expected reward formula does not apply.")
  return res


def _fmt(x):
  return f"{np.mean(x):.3f} ± {np.std(x):.3f}"


def run(size: str, workdir: str) -> Claim:
  """Runs the toy at `size` ("small" or "full") and writes a plot and metrics into `workdir`."""
  if size not in CONFIGS:
    raise ValueError(f"`size` must be one of {tuple(CONFIGS)}, got {size!r}.")
  cfg = CONFIGS[size]
  os.makedirs(workdir, exist_ok=True)
  t0 = time.time()
  res = _run_seeds(cfg)
  final = {m: res[m][:, -1] for m in METHODS}
  means = {m: float(np.mean(v)) for m, v in final.items()}
  beats = {v: means[v] > max(means[b] for b in BASELINES) for v in VARIANTS}
  filter_helps = means["alol"] > means["alol_no_filter"]
  holds = bool(all(beats.values()) and filter_helps)

  rows = ["| method | final exact expected reward (mean ± std over seeds) |", "|---|---|",
          f"| pi_ref (NLL/SFT start) | {_fmt(res['ref'])} |"]
  rows += [f"| {m} | {_fmt(final[m])} |" for m in METHODS]
  rows += ["", f"seeds: {cfg['seeds']}; dataset: {cfg['prompts']} prompts x {cfg['per_prompt']} "
           f"responses, low-reward (< 0.5) fraction {_fmt(res['low_reward_fraction'])}, mean "
           f"reward {_fmt(res['mean_reward_data'])}; A <= 0 dropped: "
           f"{_fmt(res['dropped_fraction'])}; {cfg['steps']} steps of batch {cfg['batch']}."]
  if cfg["sweep"]:
    rows += ["", "Sensitivity to the share of bad responses (reported, not part of the claim; "
             "final exact expected reward, mean ± std over seeds):", "",
             "| bad share | " + " | ".join(METHODS) + " |", "|---" * (len(METHODS) + 1) + "|"]
    for bad in cfg["sweep"]:
      other = _run_seeds(dict(cfg, bad=bad))
      rows.append(f"| {bad} | " + " | ".join(_fmt(other[m][:, -1]) for m in METHODS) + " |")
  table = "\n".join(rows)

  steps = np.arange(1, res["alol"].shape[1] + 1) * cfg["eval_every"]
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for m in METHODS:
    mu, sd = res[m].mean(0), res[m].std(0)
    ax.plot(steps, mu, label=m, ls="--" if m in BASELINES + ("rgold", "rlol") else "-")
    ax.fill_between(steps, mu - sd, mu + sd, alpha=0.15)
  ax.axhline(float(np.mean(res["ref"])), color="k", lw=0.8, label="pi_ref")
  ax.set_xlabel("gradient step")
  ax.set_ylabel("exact expected reward")
  ax.set_title(f"A-LoL on offline reverse-task data ({size}, {cfg['seeds']} seeds)")
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  plot, metrics = save_artifacts(
      workdir, fig, {"config": cfg, "final": {m: final[m].tolist() for m in METHODS},
                     "ref": res["ref"].tolist(),
                     "dropped_fraction": res["dropped_fraction"].tolist(),
                     "seconds": time.time() - t0}, "alol.png", "alol_metrics.json")

  worst = min(VARIANTS, key=lambda v: means[v])
  statement = (f"A-LoL variants' reward >= {means[worst]:.3f} ({worst}) vs NLL {means['nll']:.3f}, "
               f"wBC {means['wbc']:.3f}; A-LoL {means['alol']:.3f} vs no A>0 filter "
               f"{means['alol_no_filter']:.3f} ({cfg['seeds']} seeds)")
  return Claim(holds=holds, statement=statement, table=table, artifacts=(plot, metrics))
