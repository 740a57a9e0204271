"""CAPO (Melo, Abate & Gal 2025, arXiv 2510.00819), transformer set-up: GRPO at an aggressive
learning rate, with and without CAPO's curvature-aware token mask, on a token task with the small
transformer policy. `experiments/papers/capo.py` is the driver (it adds the bandit set-up,
`_capo_bandit.py`); `run` here returns the Claim of this set-up alone.

Claim (PAPERS.md `capo`): "At a learning rate 10-30x the stable one, GRPO's reward collapses while
CAPO's keeps rising, rejecting under 10% of tokens."

Setup. The `reverse` token task; the causal transformer pretrained by `train.pretrain` to a sampled
success rate in [0.2, 0.6] (one pretrained policy shared by all seeds; the seeds draw the RL prompts
and samples, vmapped under one jit). Each update samples `prompts x group` responses at temperature
1 and takes ONE Adam step (CAPO's recipes: num_iterations = 1, beta = 0, grad-norm clip 1.0, Adam
eps 1e-8 as the HF trainer) on the GRPO loss (`presets.grpo("grpo")`, per-sequence token mean,
which is also CAPO's renormalisation). Three runs per seed:
  grpo_stable  GRPO at the stable peak learning rate LR;
  grpo_aggr    GRPO at MULT x LR (MULT = 20, inside the claim's 10-30x);
  capo_aggr    GRPO at MULT x LR with CAPO's token mask (`second_order.capo`, Adam predictive
               model, symmetric Hessian test, top-50 candidates = the whole 37-token vocabulary),
each with the recipes' schedule (linear warmup over the first 10% of updates, then cosine decay;
CAPO's eta is the current rate). The claim reads these three. The same three with a constant rate
("/const") are reported beside them: without warmup, the first Adam step at MULT x LR moves every
weight by about the rate at once, which no token mask can prevent (our first run, 2026-11-25,
had only these, and both aggressive runs collapsed at the first update). "capo_aggr/paper_tau"
uses the recipe's own thresholds tau_F = 1e-4, tau_H = 0.01 unchanged (they are dimensionless:
nats of predicted policy shift and of predicted objective change), for reference.
Thresholds. The paper's tau_F = 1e-4, tau_H = 0.01 are set for a 7B model at lr 1.5e-5 and reject
under 8% of tokens there. Our model's scale differs, so the thresholds are calibrated ONCE, by a rule
fixed before any run: tau_F and tau_H are the 95th percentiles of KL_t and |DeltaJ_t| over the
response tokens of one batch sampled from the pretrained policy at the aggressive learning rate
(the paper's operating point, ~5% rejected at the start). They are then held fixed.
The reward curve is the mean exact-match reward of each update's sampled batch. The start is the
pretrained policy's success rate (`pretrain`'s last measurement, `eval_size` prompts). "Collapse":
the mean reward over the last 20% of updates is below the start; "keeps rising": above it.
The last hidden state (the output of the final LayerNorm, the LM-head input) comes from
`models.transformer.apply_with_hidden`.
"""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.papers import Claim
from pgx_lab.envs.token_tasks import make_task
from pgx_lab.envs.token_tasks import vocab
from pgx_lab.estimators import presets
from pgx_lab.models import transformer
from pgx_lab.rollout import sequences
from pgx_lab.second_order import capo
from pgx_lab.train.pretrain import exact_task
from pgx_lab.train.pretrain import pretrain

SIZES = {
    "small": dict(seeds=2, updates=30, prompts=4, group=8, d_model=32, layers=1, difficulty=3,
                  pretrain_steps=600, eval_size=128),
    "full": dict(seeds=5, updates=150, prompts=8, group=8, d_model=64, layers=2, difficulty=4,
                 pretrain_steps=2000, eval_size=256),
}
LR = 3e-4          # the stable learning rate (the house GRPO token config's)
MULT = 20          # aggressive = MULT x LR
QUANTILE = 0.95    # threshold calibration (see the module docstring)
WARMUP = 0.1      # warmup_ratio of the paper's recipes (then cosine decay to 0)
PAPER_TAU = (1e-4, 0.01)  # the GRPO-based CAPO recipe's tau_F, tau_H
# (name, lr multiple of LR, CAPO mask, warmup-cosine schedule, paper taus instead of calibrated);
# the claim reads the first three.
METHODS = (("grpo_stable", 1, False, True, False), ("grpo_aggr", MULT, False, True, False),
           ("capo_aggr", MULT, True, True, False), ("capo_aggr/paper_tau", MULT, True, True, True),
           ("grpo_stable/const", 1, False, False, False),
           ("grpo_aggr/const", MULT, False, False, False),
           ("capo_aggr/const", MULT, True, False, False))


def lr_factor(t, updates: int, cosine):
  """The recipes' schedule (HF get_cosine_schedule_with_warmup): t / w for t < w = WARMUP x
  updates, then 0.5 (1 + cos(pi (t - w) / (updates - w))); 1 (constant) where `cosine` is False."""
  w = max(1, round(WARMUP * updates))
  prog = jnp.clip((t - w) / max(1, updates - w), 0.0, 1.0)
  f = jnp.where(t < w, t / w, 0.5 * (1.0 + jnp.cos(jnp.pi * prog)))
  return jnp.where(cosine, f, 1.0)


def forward(params, model, tokens, attention_mask):
  """(logits [B, L, V], final hidden state [B, L, D]) from `transformer.apply_with_hidden`."""
  logits, _, hidden = transformer.apply_with_hidden(params, model, tokens, attention_mask)
  return logits, hidden


def capo_inputs(params, model, batch, attention_mask):
  """logp [B, N] of the response tokens, their LM-head inputs h [B, N, D] and response ids [B, N]."""
  prompt_len = batch.tokens.shape[1] - batch.mask.shape[1]
  logits, hidden = forward(params, model, batch.tokens, attention_mask)
  response = batch.tokens[:, prompt_len:]
  logp_all = jax.nn.log_softmax(logits[:, prompt_len - 1:-1], axis=-1)
  logp = jnp.take_along_axis(logp_all, response[..., None], axis=-1)[..., 0]
  return logp, hidden[:, prompt_len - 1:-1], response


def make_update(task, model, cfg):
  """One RL update (sample, GRPO loss with or without CAPO's mask, one Adam step) as a function
  `update(carry, (key, t), peak_lr, use_capo, cosine, tau) -> (carry, metrics)`, carry (params,
  opt_state, capo_state); the step's rate is peak_lr x lr_factor(t) (CAPO's eta is that current
  rate, as `get_last_lr()` in the code). Everything but the shapes is traced, so every method
  shares one compilation (vmapped)."""
  estimator = presets.grpo("grpo")
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_adam(eps=1e-8))
  def loss_fn(params, batch, attention_mask, cstate, lr, use_capo, tau):
    ccfg = capo.CapoConfig(tau_fisher=tau[0], tau_hessian=tau[1])
    logp, hidden, response = capo_inputs(params, model, batch, attention_mask)
    adv = jax.lax.stop_gradient(estimator.advantage(batch))
    keep, new_state, m = capo.capo_mask(hidden, params["head"]["kernel"], params["head"]["bias"],
                                        response, adv, batch.mask, cstate, lr, ccfg)
    keep = jnp.where(use_capo, keep, batch.mask.astype(keep.dtype))
    cstate = jax.tree_util.tree_map(lambda a, b: jnp.where(use_capo, a, b), new_state, cstate)
    loss, _ = capo.with_mask(estimator, keep)(logp, batch)
    return loss, (cstate, {"capo_rejected": jnp.where(use_capo, m["capo_rejected"], 0.0)})

  def update(carry, key_t, peak_lr, use_capo, cosine, tau):
    key, t = key_t
    lr = peak_lr * lr_factor(t, cfg["updates"], cosine)
    params, opt_state, cstate = carry
    k_prompt, k_sample = jax.random.split(key)
    prompts = task.sample_prompts(k_prompt, cfg["prompts"])
    batch, extras = sequences.sample_groups(k_sample, params, model, task, prompts, cfg["group"],
                                            temperature=1.0)
    grads, (cstate, metrics) = jax.grad(loss_fn, has_aux=True)(
        params, batch, extras["attention_mask"], cstate, lr, use_capo, tau)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    updates = jax.tree_util.tree_map(lambda x: -lr * x, updates)
    metrics["reward"] = jnp.mean(batch.rewards)
    return (optax.apply_updates(params, updates), opt_state, cstate), metrics

  return update, optimizer


@jax.jit
def _quantiles(kl, delta_j, mask):
  """QUANTILE of KL_t and |DeltaJ_t| over the response tokens (mask > 0)."""
  w = mask > 0
  q = lambda x: jnp.nanquantile(jnp.where(w, x, jnp.nan), QUANTILE)
  return q(kl), q(jnp.abs(delta_j))


def calibrate(task, model, cfg, params, key):
  """(tau_F, tau_H): the QUANTILE of KL_t and |DeltaJ_t| on one batch at the aggressive rate."""

  @jax.jit
  def terms(params, key):
    prompts = task.sample_prompts(key, cfg["prompts"])
    batch, extras = sequences.sample_groups(key, params, model, task, prompts, cfg["group"],
                                            temperature=1.0)
    _, hidden, response = capo_inputs(params, model, batch, extras["attention_mask"])
    adv = presets.grpo("grpo").advantage(batch)
    off = capo.CapoConfig(tau_fisher=0.0, tau_hessian=0.0)
    _, _, m = capo.capo_mask(hidden, params["head"]["kernel"], params["head"]["bias"], response,
                             adv, batch.mask,
                             capo.init_state(model.vocab_size, model.d_model + 1), MULT * LR, off)
    return _quantiles(m["terms"]["kl"], m["terms"]["delta_j"], batch.mask)

  return tuple(float(x) for x in terms(params, key))


def head_vs_full(task, model, params, key, prompts=2, group=8):
  """Checks the LM-head model against the whole network on one batch of the pretrained policy
  (first step, empty predictive state, so d_t is the token's own gradient in both): the ratio of
  the head model's s_t to the full network's (median) and the rank correlations of KL_t and
  DeltaJ_t over response tokens (`capo.full_network_terms`, one HVP per token)."""
  batch, extras = sequences.sample_groups(key, params, model, task,
                                          task.sample_prompts(key, prompts), group)
  am = extras["attention_mask"]
  adv = presets.grpo("grpo").advantage(batch)
  _, hidden, response = capo_inputs(params, model, batch, am)
  off = capo.CapoConfig(tau_fisher=0.0, tau_hessian=0.0)
  head = capo.capo_mask(hidden, params["head"]["kernel"], params["head"]["bias"], response, adv,
                        batch.mask, capo.init_state(model.vocab_size, model.d_model + 1),
                        MULT * LR, off)[2]["terms"]
  full = jax.jit(lambda p: capo.full_network_terms(
      lambda q: capo_inputs(q, model, batch, am)[0], p, adv, MULT * LR))(params)
  valid = (np.asarray(batch.mask) > 0) & (np.abs(np.asarray(adv))[:, None] > 0)
  pick = lambda t, k: np.asarray(t[k])[valid]
  rank = lambda x: np.argsort(np.argsort(x))
  corr = lambda k: float(np.corrcoef(rank(pick(head, k)), rank(pick(full, k)))[0, 1])
  ratio = float(np.median(np.abs(pick(head, "s")) / np.abs(pick(full, "s"))))
  return {"tokens": int(valid.sum()), "s_ratio": ratio, "kl_rank_corr": corr("kl"),
          "delta_j_rank_corr": corr("delta_j")}


def train_all(task, model, cfg, params, tau, key):
  """Reward and rejection curves [seeds, updates] of every method: methods and seeds vmapped
  under one jit (the same seed keys for every method)."""
  update, optimizer = make_update(task, model, cfg)
  lrs = jnp.array([LR * m[1] for m in METHODS])
  use = jnp.array([m[2] for m in METHODS])
  cos = jnp.array([m[3] for m in METHODS])
  taus = jnp.array([PAPER_TAU if m[4] else tau for m in METHODS])
  steps = jnp.arange(cfg["updates"], dtype=jnp.float32)

  def one(seed_key, lr, use_capo, cosine, tau):
    carry = (params, optimizer.init(params), capo.init_state(model.vocab_size, model.d_model + 1))
    step = lambda c, kt: update(c, kt, lr, use_capo, cosine, tau)
    return jax.lax.scan(step, carry, (jax.random.split(seed_key, cfg["updates"]), steps))[1]

  seeds = jax.vmap(one, in_axes=(0, None, None, None, None))
  out = jax.jit(jax.vmap(seeds, in_axes=(None, 0, 0, 0, 0)))(jax.random.split(key, cfg["seeds"]),
                                                             lrs, use, cos, taus)
  return {m[0]: jax.tree_util.tree_map(lambda x, i=i: np.asarray(x[i]), out)
          for i, m in enumerate(METHODS)}


def _plot(curves, path):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  colors = {"grpo_stable": "C0", "grpo_aggr": "C1", "capo_aggr": "C2",
            "capo_aggr/paper_tau": "C3"}
  for method, m in curves.items():
    color = colors.get(method, colors.get(method.split("/")[0]))
    x = np.arange(m["reward"].shape[1])
    mean, std = m["reward"].mean(0), m["reward"].std(0)
    style = "--" if method.endswith("/const") else ":" if method.endswith("tau") else "-"
    axes[0].plot(x, mean, style, color=color, label=method)
    if style == "-":
      axes[0].fill_between(x, mean - std, mean + std, color=color, alpha=0.2)
  axes[0].set(xlabel="update", ylabel="sampled reward", title="reward (mean ± std over seeds)")
  axes[0].legend()
  axes[1].plot(100 * curves["capo_aggr"]["capo_rejected"].mean(0), color="C2", label="capo_aggr")
  axes[1].plot(100 * curves["capo_aggr/const"]["capo_rejected"].mean(0), "--", color="C2",
               label="capo_aggr/const")
  axes[1].plot(100 * curves["capo_aggr/paper_tau"]["capo_rejected"].mean(0), ":", color="C3",
               label="capo_aggr/paper_tau")
  axes[1].legend()
  axes[1].set(xlabel="update", ylabel="% tokens rejected", title="CAPO rejected tokens")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run(size: str, workdir: str) -> Claim:
  """Runs the comparison at `size` ("small" or "full") in `workdir`; returns the Claim."""
  if size not in SIZES:
    raise ValueError(f"`size` must be one of {tuple(SIZES)}, got {size!r}.")
  cfg = SIZES[size]
  start = time.perf_counter()
  task = make_task("reverse", max_difficulty=cfg["difficulty"])
  model = transformer.TransformerConfig(
      vocab_size=vocab.VOCAB_SIZE, max_len=task.prompt_len + task.response_len,
      d_model=cfg["d_model"], num_layers=cfg["layers"], num_heads=4, value_head=False)
  k_pre, k_cal, k_rl = jax.random.split(jax.random.PRNGKey(0), 3)
  params, hist = pretrain(k_pre, task, model, target_success=(0.2, 0.6),
                          max_steps=cfg["pretrain_steps"], batch_size=64, lr=1e-3, eval_every=10,
                          eval_size=cfg["eval_size"], on_failure="return")
  tau = calibrate(exact_task(task), model, cfg, params, k_cal)
  curves = train_all(exact_task(task), model, cfg, params, tau, k_rl)
  check = head_vs_full(exact_task(task), model, params, k_cal) if size == "full" else None
  u = cfg["updates"]
  start_r = hist["success"][-1]
  first, last = slice(0, max(1, u // 10)), slice(u - max(1, u // 5), u)
  rows, stats = [], {}
  for method, m in curves.items():
    r0, r1 = m["reward"][:, first].mean(1), m["reward"][:, last].mean(1)
    rej = m["capo_rejected"].mean(1)
    stats[method] = (r0, r1, rej)
    peak = LR * dict((m[0], m[1]) for m in METHODS)[method]
    sched = "const" if method.endswith("/const") else "warmup+cos"
    rows.append(f"| {method} | {peak:.1e} {sched} | "
                f"{r0.mean():.3f} ± {r0.std():.3f} | {r1.mean():.3f} ± {r1.std():.3f} | "
                f"{100 * rej.mean():.1f} ± {100 * rej.std():.1f} |")
  table = (f"Start (pretrained success): {start_r:.3f}\n\n"
           "| method | peak lr, schedule | reward, first 10% | reward, last 20% | % tokens rejected |\n"
           "|---|---|---|---|---|\n" + "\n".join(rows))
  if check is not None:
    table += (f"\n\nHead model vs whole network (`head_vs_full`; one batch, {check['tokens']} "
              f"tokens with A != 0, first step): median |s_head / s_full| {check['s_ratio']:.3g}, "
              f"rank correlation of KL_t {check['kl_rank_corr']:.2f}, of DeltaJ_t "
              f"{check['delta_j_rank_corr']:.2f}.")
  _, g1, _ = stats["grpo_aggr"]
  _, c1, crej = stats["capo_aggr"]
  holds = bool(g1.mean() < start_r < c1.mean() and crej.mean() < 0.10)
  os.makedirs(workdir, exist_ok=True)
  plot = os.path.join(workdir, "capo_reward.png")
  _plot(curves, plot)
  np.savez(os.path.join(workdir, "capo_curves.npz"),
           **{f"{k}_{n}": v for k, m in curves.items() for n, v in m.items()})
  statement = (f"reverse task, lr {MULT}x stable ({MULT * LR:.0e}), {cfg['seeds']} seeds, "
               f"start (pretrained) success {start_r:.3f}: last-20% reward GRPO {g1.mean():.3f}, "
               f"CAPO {c1.mean():.3f}, stable GRPO {stats['grpo_stable'][1].mean():.3f}; CAPO rejects "
               f"{100 * crej.mean():.1f}% of tokens (tau_F {tau[0]:.2e}, tau_H {tau[1]:.2e}; "
               f"{time.perf_counter() - start:.0f} s)")
  return Claim(holds=holds, statement=statement, table=table,
               artifacts=(plot, os.path.join(workdir, "capo_curves.npz")))
