r"""HPT (Lv et al. 2025, arXiv 2509.04419): per-prompt switch between RL and SFT on a token task.

Claim (PAPERS.md, row hpt): on a token task where some prompt classes start at ~0 success, HPT
learns them; GRPO alone stays near 0 there; SFT alone is worse on the rest.

The toy (spec llm_post_training.md section 5 (d)):
  * task: a mixture (`token_tasks.mixture`) of "copy" (strings of 1-4 digits, classes 0-3) and
    "reverse" (strings of 3-4 digits, classes 4-5), drawn 50/50;
  * start: the small causal transformer (`models.transformer`, d_model 32, 2 layers) pretrained
    with `train.pretrain` on copy ONLY, to a sampled copy success in [0.2, 0.6]. It has never seen
    the reverse marker and copies instead, which solves a reverse prompt only for palindromes
    (1 in 100 strings of 3 digits): the "hard" reverse classes start at ~0, the "rest" (copy)
    classes are in the band;
  * then `steps` Adam steps (lr 1e-3, grad-norm clip 1) from the same start with each method, on
    fresh batches of `prompts` prompts x G = 8 sampled rollouts (temperature 1), exact-match
    reward, one gradient step per batch (on-policy):
      GRPO  `presets.grpo("bnpo")` on the rollouts (group-normalised advantage, clip 0.2, token
            mean, no KL): all-fail groups give zero gradient;
      SFT   token-mean NLL of every prompt's demonstration (answer + EOS);
      HPT   `estimators.hybrid.hpt_loss`, switch gate 0 (Qwen setting: SFT on the demonstration
            when all 8 rollouts fail, GRPO on the rollouts otherwise), sft_loss_coef 1.
    The three are one program: `hpt_loss` with per-prompt weights (alpha, beta) = (1, 0) (GRPO),
    (0, 1) (SFT) or the switch (HPT), so all methods and seeds run in one vmapped, jitted scan.
  * score: the exact success probability of a prompt, pi(answer + EOS | prompt) = exp(sum of the
    demonstration's token log-probs) (exact match at temperature 1 means sampling exactly that
    sequence), averaged per class over a fixed set of `eval_prompts` fresh prompts.
    "hard" = mean of the two reverse classes, "rest" = mean of the four copy classes.

Thresholds, fixed before the first run (not tuned): over seeds (mean),
  (0) the start is as intended: hard success at step 0 < 0.05;
  (1) HPT learns the hard classes: HPT hard >= 0.3 at the end;
  (2) GRPO stays near 0 there: GRPO hard <= 0.05 at the end;
  (3) SFT is worse on the rest: SFT rest < HPT rest at the end.
The claim holds when (0)-(3) all hold at size "full" (5 seeds). Size "small" runs the same code
with 2 seeds and few steps (a smoke test; its verdict is not evidence).

Result of the first full run (2026-11-25, not tuned afterwards): (0)-(2) hold (hard classes: HPT
0.43 ± 0.20, GRPO 0.04 ± 0.02, start 0.01), (3) fails: SFT alone is BETTER on the copy classes
(0.72 ± 0.15 vs HPT 0.67 ± 0.12; SFT ahead in 4 of 5 paired seeds), and GRPO alone is best there
(0.84 ± 0.05). Here the demonstrations are exactly the reward's target, so SFT is a strong signal
on every class, and HPT's SFT term on the hard prompts competes with its RL term on the rest
(summed losses, one global grad-norm clip), which slows HPT on copy relative to GRPO.
"""

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
from pgx_lab.estimators import hybrid  # noqa: E402
from pgx_lab.models import transformer  # noqa: E402
from pgx_lab.rollout import sequences  # noqa: E402
from pgx_lab.train.pretrain import pretrain  # noqa: E402

METHODS = ("GRPO", "SFT", "HPT")
GROUP, LR, GATE, SFT_COEF, BAND = 8, 1e-3, 0, 1.0, (0.2, 0.6)
HARD_START_MAX, HPT_HARD_MIN, GRPO_HARD_MAX = 0.05, 0.3, 0.05   # fixed beforehand
CONFIGS = {
    "small": dict(seeds=2, steps=20, eval_every=10, prompts=8, eval_prompts=512),
    "full": dict(seeds=5, steps=300, eval_every=25, prompts=16, eval_prompts=4096),
}

COPY = make_task("copy", max_difficulty=4)
TASK = make_task("mixture", tasks=(COPY, make_task("reverse", min_difficulty=3,
                                                   max_difficulty=4)))
HARD = np.arange(TASK.num_classes) >= TASK.class_offsets[1]      # the reverse classes
MODEL = transformer.TransformerConfig(vocab_size=vocab.VOCAB_SIZE,
                                      max_len=TASK.prompt_len + TASK.response_len, d_model=32,
                                      num_layers=2, num_heads=2, value_head=False)


def demo_logp(params, prompts, demo):
  """Token log-probs [n, L + 1] of the demonstrations and their mask (PAD not trained on)."""
  demo_mask = (demo != vocab.PAD).astype(jnp.int32)
  tokens = jnp.concatenate([prompts.tokens, demo], axis=1)
  attn = jnp.concatenate([prompts.mask.astype(jnp.int32), demo_mask], axis=1)
  logp, _ = sequences.response_logp(params, MODEL, tokens, prompts.tokens.shape[1], attn)
  return logp, demo_mask.astype(jnp.float32)


def class_success(params, prompts, demo):
  """[num_classes] exact success probability per class (module docstring)."""
  logp, mask = demo_logp(params, prompts, demo)
  p = jnp.exp(jnp.sum(jnp.where(mask > 0, logp, 0.0), axis=1))
  onehot = jax.nn.one_hot(prompts.class_id, TASK.num_classes)
  return (p @ onehot) / jnp.maximum(jnp.sum(onehot, axis=0), 1.0)


def weights_fn(method):
  """HPT's (alpha, beta) as a function of the solve rate P for a traced method index."""
  def fn(p):
    switch = (p > GATE / GROUP).astype(jnp.float32)        # solved > gate
    alpha = jnp.select([method == 0, method == 1], [jnp.ones_like(p), jnp.zeros_like(p)], switch)
    return alpha, 1.0 - alpha
  return fn


def train(method, params, key, eval_set, cfg):
  """One run of method index `method` (traced) from `params`: per-class success [E + 1, C] at
  steps 0, eval_every, ..., steps, and the mean share of prompts on SFT per chunk [E]."""
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(LR))
  mode = weights_fn(method)

  def loss_fn(p, batch, attn, prompts, demo):
    logp, _ = sequences.response_logp(p, MODEL, batch.tokens,
                                      batch.tokens.shape[1] - batch.mask.shape[1], attn)
    d_logp, d_mask = demo_logp(p, prompts, demo)
    return hybrid.hpt_loss(logp, batch, d_logp, d_mask, gate=GATE, sft_loss_coef=SFT_COEF,
                           mode=mode)

  def step(carry, k):
    p, opt_state = carry
    kp, ks = jax.random.split(k)
    prompts = TASK.sample_prompts(kp, cfg["prompts"])
    batch, extras = sequences.sample_groups(ks, p, MODEL, TASK, prompts, GROUP, temperature=1.0)
    grads, m = jax.grad(loss_fn, has_aux=True)(p, batch, extras["attention_mask"], prompts,
                                               TASK.demonstration(prompts))
    updates, opt_state = opt.update(grads, opt_state, p)
    return (optax.apply_updates(p, updates), opt_state), m["sft_fraction"]

  def chunk(carry, k):
    carry, frac = jax.lax.scan(step, carry, jax.random.split(k, cfg["eval_every"]))
    return carry, (class_success(carry[0], *eval_set), jnp.mean(frac))

  n_chunks = cfg["steps"] // cfg["eval_every"]
  _, (curve, frac) = jax.lax.scan(chunk, (params, opt.init(params)),
                                  jax.random.split(key, n_chunks))
  start = class_success(params, *eval_set)
  return jnp.concatenate([start[None], curve]), frac


def _fmt(x):
  return f"{np.mean(x):.3f} ± {np.std(x):.3f}"


def run(size: str, workdir: str) -> Claim:
  """Pretrains one start per seed, trains GRPO, SFT and HPT from it; returns the Claim."""
  cfg = CONFIGS[size]
  t0 = time.time()
  starts, reached = [], []
  for seed in range(cfg["seeds"]):
    params, hist = pretrain(jax.random.PRNGKey(seed), COPY, MODEL, target_success=BAND,
                            max_steps=1500, batch_size=64, lr=3e-3, eval_every=10,
                            eval_size=512, on_failure="return")
    starts.append(params)
    reached.append(hist["reached"])
  starts = jax.tree.map(lambda *x: jnp.stack(x), *starts)
  eval_prompts = TASK.sample_prompts(jax.random.PRNGKey(10_000), cfg["eval_prompts"])
  eval_set = (eval_prompts, TASK.demonstration(eval_prompts))
  seeds = jnp.arange(cfg["seeds"])

  @jax.jit
  def all_runs(starts):
    def one(method, seed, params):
      return train(method, params, jax.random.PRNGKey(1000 + seed), eval_set, cfg)
    per_seed = jax.vmap(one, in_axes=(None, 0, 0))
    return jax.vmap(per_seed, in_axes=(0, None, None))(jnp.arange(3), seeds, starts)

  curves, frac = jax.device_get(all_runs(starts))     # [M, S, E + 1, C], [M, S, E]
  hard = curves[..., HARD].mean(-1)                   # [M, S, E + 1]
  rest = curves[..., ~HARD].mean(-1)
  final = {m: (hard[i, :, -1], rest[i, :, -1]) for i, m in enumerate(METHODS)}
  start_hard, start_rest = hard[0, :, 0], rest[0, :, 0]
  checks = {
      "start hard < 0.05": np.mean(start_hard) < HARD_START_MAX,
      "HPT hard >= 0.3": np.mean(final["HPT"][0]) >= HPT_HARD_MIN,
      "GRPO hard <= 0.05": np.mean(final["GRPO"][0]) <= GRPO_HARD_MAX,
      "SFT rest < HPT rest": np.mean(final["SFT"][1]) < np.mean(final["HPT"][1]),
  }
  holds = all(checks.values())

  n = cfg["seeds"]
  names = [f"copy d={d}" for d in range(1, 5)] + [f"reverse d={d}" for d in (3, 4)]
  lines = [f"{n} seeds, {cfg['steps']} steps x {cfg['prompts']} prompts x {GROUP} rollouts; "
           f"exact success probability over {cfg['eval_prompts']} prompts (mean ± std over "
           "seeds). Pretrained copy-only start reached the band in "
           f"{sum(reached)}/{n} seeds.", "",
           "| method | hard (reverse) | rest (copy) | " + " | ".join(names) + " |",
           "|---|---|---|" + "---|" * len(names)]
  lines.append("| start | " + _fmt(start_hard) + " | " + _fmt(start_rest) + " | "
               + " | ".join(_fmt(curves[0, :, 0, c]) for c in range(len(names))) + " |")
  for i, m in enumerate(METHODS):
    lines.append(f"| {m} | {_fmt(final[m][0])} | {_fmt(final[m][1])} | "
                 + " | ".join(_fmt(curves[i, :, -1, c]) for c in range(len(names))) + " |")
  lines += ["", f"HPT share of prompts on SFT: first chunk {_fmt(frac[2, :, 0])}, last chunk "
            f"{_fmt(frac[2, :, -1])}.", "",
            "| check | holds |", "|---|---|"] + [f"| {k} | {v} |" for k, v in checks.items()]
  table = "\n".join(lines)

  steps = np.arange(curves.shape[2]) * cfg["eval_every"]
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, data, title in ((axes[0], hard, "hard classes (reverse, start ~0)"),
                          (axes[1], rest, "rest (copy, start in band)")):
    for i, m in enumerate(METHODS):
      mu, sd = data[i].mean(0), data[i].std(0)
      ax.plot(steps, mu, label=m)
      ax.fill_between(steps, mu - sd, mu + sd, alpha=0.2)
    ax.set_title(title)
    ax.set_xlabel("update")
    ax.set_ylabel("exact success probability")
  axes[0].legend()
  fig.tight_layout()
  plot, metrics = save_artifacts(
      workdir, fig, {"curves": curves.tolist(), "sft_fraction": frac.tolist(),
                     "checks": {k: bool(v) for k, v in checks.items()},
                     "seconds": time.time() - t0}, "hpt.png", "hpt_metrics.json")

  statement = (f"hard (reverse) classes: HPT {_fmt(final['HPT'][0])} vs GRPO "
               f"{_fmt(final['GRPO'][0])} (start {_fmt(start_hard)}); rest (copy): SFT "
               f"{_fmt(final['SFT'][1])} vs HPT {_fmt(final['HPT'][1])} ({n} seeds)")
  return Claim(holds=holds, statement=statement, table=table, artifacts=(plot, metrics))
