r"""HPT (Lv et al. 2025, arXiv 2509.04419): per-prompt switch between RL and SFT on a token task.

Claim (PAPERS.md, row hpt): on a token task where some prompt classes start at ~0 success, HPT
learns them; GRPO alone stays near 0 there; SFT alone is worse on the rest.

The toy (spec llm_post_training.md section 5 (d); pieces in `_hpt_toy.py`):
  * task: a mixture (`token_tasks.mixture`) of "copy" (strings of 1-4 digits, classes 0-3) and
    "reverse" (strings of 3-4 digits, classes 4-5), drawn 50/50;
  * start: the small causal transformer (`models.transformer`, d_model 32, 2 layers) pretrained
    with `train.pretrain` on copy ONLY, to a sampled copy success in [0.2, 0.6]. It has never seen
    the reverse marker and copies instead, which solves a reverse prompt only for palindromes
    (1 in 100 strings of 3 digits): the "hard" reverse classes start at ~0, the "rest" (copy)
    classes are in the band;
  * then `steps` Adam steps (lr 1e-3, grad-norm clip 1) from the same start with each method, on
    batches of `prompts` prompts x G = 8 sampled rollouts (temperature 1), exact-match reward, one
    gradient step per batch (on-policy):
      GRPO  `presets.grpo("bnpo")` on the rollouts (group-normalised advantage, clip 0.2, token
            mean, no KL): all-fail groups give zero gradient;
      SFT   token-mean NLL of every prompt's demonstration (answer + EOS);
      HPT   `estimators.hybrid.hpt_loss`, switch gate 0 (Qwen setting: SFT on the demonstration
            when all 8 rollouts fail, GRPO on the rollouts otherwise), sft_loss_coef 1.
    SFT->GRPO the paper's two-stage baseline (its tables' "SFT->GRPO"): SFT as above for the
          first half of the updates, then GRPO as above for the second half (same total steps,
          optimizer and learning rate; the Adam state is reset at the switch, as a separate RL
          run from the SFT checkpoint would start). The split is our reading, fixed before any
          run: neither the paper's text found here nor its code (TsinghuaC3I/Unify-Post-Training
          only prepares the SFT data, data/prepare_sft.py) gives its SFT->GRPO budget, so 50/50
          of the updates (`_hpt_toy.SFT_SHARE`).
    The four are one program: `hpt_loss` with per-prompt weights (alpha, beta) = (1, 0) (GRPO),
    (0, 1) (SFT), the switch (HPT) or (0, 1) before the split and (1, 0) after it (SFT->GRPO, a
    schedule on the traced step index, no Python branch), so all methods and seeds run in one
    vmapped, jitted scan.
  * score: the exact probability that sampling produces the demonstration (exact match), per
    prompt, averaged per class; "hard" = mean of the two reverse classes, "rest" = mean of the four
    copy classes.

Two set-ups, one compiled program (`_hpt_toy.train` reads prompts from a table):
  A "fresh" (the first version, numbers unchanged): fresh prompts every step (infinite data: no
    prompt is seen twice, SFT cannot over-fit), scored at temperature 1 on `eval_prompts` prompts
    from the training distribution (most of them also occur in training).
  B "paper" (added after A failed; the paper's set-up from its code, TsinghuaC3I/Unify-Post-
    Training exp_scripts/train.sh and data/prepare_train.py: a FIXED set of 46k prompts of
    OpenR1-Math-46k with one demonstration each, shared by SFT, RL and HPT, 500 steps x 128
    prompts = 1.39 epochs in shuffled order; validation on separate benchmarks with
    val_temperature 0.6, val_top_p 0.95, n_val 8): a fixed training set of
    N = round(steps x prompts x 46,000 / 64,000) prompts per seed (3450 at full size), the same
    shuffled epochs for every method; evaluation on `eval_prompts` HELD-OUT prompts (a fixed ~20%
    split of the distinct prompts of every class by an MD5 hash, never trained on), accuracy =
    exact success probability under sampling at temperature 0.6 with nucleus 0.95, and pass@8 =
    1 - (1 - p)^8 per prompt (exact for 8 independent samples of the policy, not estimated).

Thresholds, fixed before the first run of each set-up (not tuned): over seeds (mean),
  (0) the start is as intended: hard success at step 0 < 0.05;
  (1) HPT learns the hard classes: HPT hard >= 0.3 at the end;
  (2) GRPO stays near 0 there: GRPO hard <= 0.05 at the end;
  (3) SFT is worse on the rest: SFT rest < HPT rest at the end.
A uses its score; B uses its held-out accuracy (pass@8 is reported, not in B's verdict).
SFT->GRPO (added 2026-11-25 session 5, this sentence written before its first run) is an extra
reported row in both set-ups (and in B's pass@8 table): it does NOT enter (0)-(3) or `holds`. The
claim holds when (0)-(3) hold on BOTH set-ups at size "full" (5 seeds); each set-up's own verdict
is in the statement and the table. Size "small" runs the same code with 2 seeds and few steps (a
smoke test; its verdict is not evidence).

Result of the first full run of A (2026-11-25, not tuned afterwards): (0)-(2) hold (hard classes:
HPT 0.43 ± 0.20, GRPO 0.04 ± 0.02, start 0.01), (3) fails: SFT alone is BETTER on the copy classes
(0.72 ± 0.15 vs HPT 0.67 ± 0.12; SFT ahead in 4 of 5 paired seeds), and GRPO alone is best there
(0.84 ± 0.05). Here the demonstrations are exactly the reward's target, so SFT is a strong signal
on every class, and HPT's SFT term on the hard prompts competes with its RL term on the rest
(summed losses, one global grad-norm clip), which slows HPT on copy relative to GRPO.

Result of the first full run of B (2026-11-25, rule above written before it, not tuned): the same
pattern on held-out prompts: (0)-(2) hold (hard: HPT 0.53 ± 0.24, GRPO 0.04 ± 0.02, start 0.03),
(3) fails: SFT 0.80 ± 0.10 vs HPT 0.74 ± 0.13 on held-out copy (SFT ahead in 5 of 5 paired
seeds; pass@8 0.90 vs 0.87, SFT ahead in 4 of 5). With 1.39 epochs over the fixed set SFT does
not over-fit here, so the finite data, held-out split and temperature 0.6 do not change the
verdict; the set-up difference was not the cause of A's failure.

Result of the first full run with SFT->GRPO (2026-11-25, split fixed beforehand, not tuned):
the verdict is unchanged (it does not enter it). SFT->GRPO ends highest of all on the hard
classes (A 0.61 ± 0.16, B held-out 0.73 ± 0.19; ahead of HPT in 5 and 4 of 5 paired seeds) and
lowest of the trained methods on the rest (A 0.66 ± 0.11, B 0.66 ± 0.11, below B's start 0.71):
the GRPO stage sharpens, per string length, whichever of copy or reverse the SFT stage left
ahead: copy d=4 falls below 0.01 in every seed of B (below 0.02 in 4 of 5 of A) while reverse
d=4 rises, and in 4 of 5 seeds one of copy d=3 / reverse d=3 goes to ~1 and the other to ~0.1;
its pass@8 is then ~ its pass@1 (B: hard 0.74,
rest 0.66, below SFT and HPT in 4-5 of 5 seeds). At its switch (update 150) it equals SFT's run
at update 150 to the last bit (the SFT stage is SFT). Adding the fourth method to the vmap
changed the GRPO and HPT curves within their spread (e.g. A hard HPT 0.434 -> 0.416): un-vmapped,
the old and new `train` give bit-identical runs, so this is XLA arithmetic at another batch size
amplified by sampling, not a change of method.
"""

import time

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.papers import Claim, save_artifacts  # noqa: E402
from experiments.papers import _hpt_toy as toy  # noqa: E402
from pgx_lab.train.pretrain import pretrain  # noqa: E402

METHODS, HARD = toy.METHODS, toy.HARD
HARD_START_MAX, HPT_HARD_MIN, GRPO_HARD_MAX = 0.05, 0.3, 0.05   # fixed beforehand
CONFIGS = {
    "small": dict(seeds=2, steps=20, eval_every=10, prompts=8, eval_prompts=512),
    "full": dict(seeds=5, steps=300, eval_every=25, prompts=16, eval_prompts=4096),
}
NAMES = [f"copy d={d}" for d in range(1, 5)] + [f"reverse d={d}" for d in (3, 4)]


def _fmt(x):
  return f"{np.mean(x):.3f} ± {np.std(x):.3f}"


@jax.jit
def _all_runs(starts, tables, schedules, eval_set, temperature, top_p):
  """Every (method, seed) run of one set-up: [M, S, E + 1, C] success and pass@k, [M, S, E]."""
  every = schedules.shape[2]

  def one(method, seed, params, table, schedule):
    return toy.train(method, params, toy.run_key(seed), table, schedule, eval_set, temperature,
                     top_p, every)
  per_seed = jax.vmap(one, in_axes=(None, 0, 0, 0, 0))
  seeds = jnp.arange(schedules.shape[0])
  return jax.vmap(per_seed, in_axes=(0,) + (None,) * 4)(jnp.arange(len(METHODS)), seeds, starts,
                                                          tables, schedules)


def _checks(hard, rest):
  """The four checks (module docstring) from hard/rest [M, S, E + 1] of one set-up."""
  return {
      "start hard < 0.05": np.mean(hard[0, :, 0]) < HARD_START_MAX,
      "HPT hard >= 0.3": np.mean(hard[2, :, -1]) >= HPT_HARD_MIN,
      "GRPO hard <= 0.05": np.mean(hard[0, :, -1]) <= GRPO_HARD_MAX,
      "SFT rest < HPT rest": np.mean(rest[1, :, -1]) < np.mean(rest[2, :, -1]),
  }


def _rows(curves, hard, rest):
  """Markdown rows start, GRPO, SFT, HPT of hard, rest and per-class means ± std over seeds."""
  lines = ["| start | " + _fmt(hard[0, :, 0]) + " | " + _fmt(rest[0, :, 0]) + " | "
           + " | ".join(_fmt(curves[0, :, 0, c]) for c in range(len(NAMES))) + " |"]
  for i, m in enumerate(METHODS):
    lines.append(f"| {m} | {_fmt(hard[i, :, -1])} | {_fmt(rest[i, :, -1])} | "
                 + " | ".join(_fmt(curves[i, :, -1, c]) for c in range(len(NAMES))) + " |")
  return lines


def _at_switch(res, what, split, every):
  """One line: SFT->GRPO's hard/rest at its switch (the end of its SFT stage) and at the end."""
  c = split // every
  return (f"SFT->GRPO {what} at the switch (update {split}, end of its SFT stage): hard "
          f"{_fmt(res['hard'][3, :, c])}, rest {_fmt(res['rest'][3, :, c])}; at the end: hard "
          f"{_fmt(res['hard'][3, :, -1])}, rest {_fmt(res['rest'][3, :, -1])}.")


def _head(what):
  return ["| method | hard (reverse) | rest (copy) | " + " | ".join(NAMES) + " |",
          "|---|---|---|" + "---|" * len(NAMES)] if what else []


def run(size: str, workdir: str) -> Claim:
  """Pretrains one start per seed, trains GRPO, SFT, HPT and SFT->GRPO from it on both set-ups."""
  cfg = CONFIGS[size]
  t0 = time.time()
  n, steps, every, b = cfg["seeds"], cfg["steps"], cfg["eval_every"], cfg["prompts"]
  starts, reached = [], []
  for seed in range(n):
    params, hist = pretrain(jax.random.PRNGKey(seed), toy.COPY, toy.MODEL,
                            target_success=toy.BAND, max_steps=1500, batch_size=64, lr=3e-3,
                            eval_every=10, eval_size=512, on_failure="return")
    starts.append(params)
    reached.append(hist["reached"])
  stack = lambda xs: jax.tree.map(lambda *x: jnp.stack(x), *xs)
  starts = stack(starts)
  pool = 8 * cfg["eval_prompts"]                # candidate prompts for the split (one shape)
  fresh_eval, test_eval = toy.eval_sets(cfg["eval_prompts"], pool)
  fresh = [toy.fresh_table(s, steps, every, b) for s in range(n)]
  paper = [toy.paper_table(s, steps, every, b, pool) for s in range(n)]
  out = {}
  for name, data, ev, temp, top_p in (("A", fresh, fresh_eval, 1.0, 1.0),
                                      ("B", paper, test_eval, toy.EVAL_TEMPERATURE,
                                       toy.EVAL_TOP_P)):
    res = _all_runs(starts, stack([d[0] for d in data]), jnp.stack([d[1] for d in data]), ev,
                    jnp.float32(temp), jnp.float32(top_p))
    acc, pk, frac = jax.device_get(res)          # [M, S, E + 1, C] twice, [M, S, E]
    out[name] = dict(acc=acc, pk=pk, frac=frac,
                     hard=acc[..., HARD].mean(-1), rest=acc[..., ~HARD].mean(-1),
                     hard_k=pk[..., HARD].mean(-1), rest_k=pk[..., ~HARD].mean(-1))
  a, p = out["A"], out["B"]
  checks = {"A": _checks(a["hard"], a["rest"]), "B": _checks(p["hard"], p["rest"])}
  verdict = {k: all(v.values()) for k, v in checks.items()}
  holds = verdict["A"] and verdict["B"]

  n_train = toy.train_set_size(steps, b)
  split = toy.two_stage_split(steps // every, every)
  lines = [f"{n} seeds, {steps} steps x {b} prompts x {toy.GROUP} rollouts from the same "
           f"copy-only start (reached the band in {sum(reached)}/{n} seeds); mean ± std over "
           "seeds.", "",
           f"Set-up A (fresh prompts every step; exact success at temperature 1 on "
           f"{cfg['eval_prompts']} prompts of the training distribution): "
           f"{'holds' if verdict['A'] else 'fails'}.", "",
           f"SFT->GRPO: SFT for updates 0-{split - 1}, GRPO for the rest (fresh Adam state at "
           "the switch); reported, not in the checks.", ""] + _head(1)
  lines += _rows(a["acc"], a["hard"], a["rest"]) + ["", _at_switch(a, "score", split, every)]
  lines += ["", f"HPT share of prompts on SFT: first chunk {_fmt(a['frac'][2, :, 0])}, last chunk "
            f"{_fmt(a['frac'][2, :, -1])}.", "",
            f"Set-up B (paper: fixed training set of {n_train} prompts with one demonstration "
            f"each, {steps * b / n_train:.2f} epochs, same order for every method; "
            f"{cfg['eval_prompts']} held-out prompts; exact success under temperature "
            f"{toy.EVAL_TEMPERATURE}, top-p {toy.EVAL_TOP_P}): "
            f"{'holds' if verdict['B'] else 'fails'}.", "", "Accuracy (pass@1):", ""]
  lines += _head(1) + _rows(p["acc"], p["hard"], p["rest"])
  lines += ["", _at_switch(p, "accuracy", split, every)]
  lines += ["", f"pass@{toy.PASS_K} (exact, 1 - (1 - p)^{toy.PASS_K}; not in the verdict):", ""]
  lines += _head(1) + _rows(p["pk"], p["hard_k"], p["rest_k"])
  lines += ["", f"HPT share of prompts on SFT: first chunk {_fmt(p['frac'][2, :, 0])}, last chunk "
            f"{_fmt(p['frac'][2, :, -1])}.", "",
            "| check | A (fresh) | B (paper) |", "|---|---|---|"]
  lines += [f"| {k} | {checks['A'][k]} | {checks['B'][k]} |" for k in checks["A"]]
  table = "\n".join(lines)

  x = np.arange(a["acc"].shape[2]) * every
  fig, axes = plt.subplots(2, 3, figsize=(14, 8))
  panels = ((a["hard"], a["rest"], None), (p["hard"], p["rest"], p["rest_k"]))
  for row, (name, (hard, rest, rest_k)) in enumerate(zip(("A fresh", "B paper"), panels)):
    series = [(hard, "hard (reverse) success"), (rest, "rest (copy) success")]
    series.append((rest_k, f"rest (copy) pass@{toy.PASS_K}") if rest_k is not None else
                  (a["frac"], "HPT share on SFT"))
    for ax, (data, title) in zip(axes[row], series):
      for i, m in enumerate(METHODS):
        if data.shape[-1] != x.size:              # the SFT share: one value per chunk
          if i == 2:
            ax.plot(x[1:], data[i].mean(0), label=m)
          continue
        mu, sd = data[i].mean(0), data[i].std(0)
        ax.plot(x, mu, label=m)
        ax.fill_between(x, mu - sd, mu + sd, alpha=0.2)
      ax.set_title(f"{name}: {title}")
      ax.set_xlabel("update")
  axes[0, 0].legend()
  fig.tight_layout()
  metrics = {k: {f: v[f].tolist() for f in ("acc", "pk", "frac")} for k, v in out.items()}
  metrics.update(checks={s: {k: bool(v) for k, v in c.items()} for s, c in checks.items()},
                 seconds=time.time() - t0)
  plot, path = save_artifacts(workdir, fig, metrics, "hpt.png", "hpt_metrics.json")

  statement = (f"A (fresh prompts) {'holds' if verdict['A'] else 'fails'}: hard HPT "
               f"{_fmt(a['hard'][2, :, -1])} vs GRPO {_fmt(a['hard'][0, :, -1])} (start "
               f"{_fmt(a['hard'][0, :, 0])}); rest SFT {_fmt(a['rest'][1, :, -1])} vs HPT "
               f"{_fmt(a['rest'][2, :, -1])}. B (paper: fixed {n_train} prompts, held-out, "
               f"T={toy.EVAL_TEMPERATURE}) {'holds' if verdict['B'] else 'fails'}: hard HPT "
               f"{_fmt(p['hard'][2, :, -1])} vs GRPO {_fmt(p['hard'][0, :, -1])} (start "
               f"{_fmt(p['hard'][0, :, 0])}); rest SFT {_fmt(p['rest'][1, :, -1])} vs HPT "
               f"{_fmt(p['rest'][2, :, -1])} ({n} seeds). Unjudged SFT->GRPO: A hard "
               f"{_fmt(a['hard'][3, :, -1])}, rest {_fmt(a['rest'][3, :, -1])}; B hard "
               f"{_fmt(p['hard'][3, :, -1])}, rest {_fmt(p['rest'][3, :, -1])}")
  return Claim(holds=holds, statement=statement, table=table, artifacts=(plot, path))
