r"""Suites of experiments run by `python -m experiments.reproduce --suite=<name>`, one report each.

`demo` (what `make demo` runs, under 5 minutes on 2 CPU cores), at the binaries' default configs:
  1. the estimator comparison on the contextual sequence bandit (`experiments.estimator_comparison`);
  2. PPO on gymnax CartPole-v1 (`experiments/configs/ppo_cartpole.py`, `loop.train_env`);
  3. GRPO on a token task from a pretrained policy (`experiments/configs/grpo_tokens.py`,
     `loop.train_tokens`).
Each part runs into its own sub-folder of the workdir, which is emptied first (a demo is a fresh
run, never a resumption); `<workdir>/report.md` gathers every part's table and plot, with the time
each part took.
"""

import os
import shutil
import time
import warnings
from typing import Callable, Dict, NamedTuple, Optional

import ml_collections

from experiments import estimator_comparison
from experiments import report as report_lib
from experiments.configs import grpo_tokens
from experiments.configs import ppo_cartpole
from experiments.configs import validate as validate_lib


ESTIMATOR_NAMES = {"grpo": "GRPO", "gspo": "GSPO", "dr_grpo": "Dr.GRPO"}


class Part(NamedTuple):
  """One experiment of a suite: its report section (markdown, links relative to the workdir)."""
  title: str
  markdown: str
  seconds: float


def estimator_part(workdir: str, config: Optional[ml_collections.ConfigDict] = None) -> Part:
  """The estimator comparison into `<workdir>/estimator_comparison/`.

  Args:
    workdir: the suite's folder.
    config: an `estimator_comparison.default_config()`-style ConfigDict; None for the default
      (6 estimators, 8 seeds, 200 iterations).
  """
  config = config if config is not None else estimator_comparison.default_config()
  sub = _fresh(workdir, "estimator_comparison")
  t0 = time.perf_counter()
  results = estimator_comparison.run(config, sub)
  seconds = time.perf_counter() - t0
  cfg = results["_config"]
  text = [
      f"Each estimator trains a tabular softmax policy on a contextual sequence bandit "
      f"({cfg['num_contexts']} contexts, {cfg['length']} tokens over {cfg['vocab_size']} "
      f"symbols, reward 1 when at least {cfg['threshold']} tokens match the hidden target) for "
      f"{cfg['iterations']} batches of {cfg['prompts_per_batch'] * cfg['group_size']} responses; "
      f"score: the exact expected reward, spread over {cfg['seeds']} seeds. Details: "
      "[estimator_comparison/report.md](estimator_comparison/report.md).",
      "",
      report_lib.summary_table(results),
      "",
      "![estimator learning curves](estimator_comparison/learning_curves.png)",
  ]
  return Part("Estimator comparison on a contextual sequence bandit", "\n".join(text), seconds)


def _fresh(workdir: str, name: str) -> str:
  """`<workdir>/<name>`, emptied: a demo part always trains from scratch."""
  sub = os.path.join(workdir, name)
  shutil.rmtree(sub, ignore_errors=True)
  return sub


def training_part(title: str, name: str, config: ml_collections.ConfigDict, workdir: str,
                  headline: str) -> Part:
  """One `pgx_lab.train.loop` run into `<workdir>/<name>/`, summarised by its `headline` metric.

  Args:
    title: the report section's title.
    name: the sub-folder (and the run's name in the table).
    config: a training config (`experiments/configs/*.py`), validated here before anything runs.
    workdir: the suite's folder.
    headline: the evaluation metric of the run's metrics.jsonl to report ("eval_return" for
      PPO, "eval_success" for the token tasks).
  """
  validate_lib.validate(config)
  from pgx_lab.train import loop  # pylint: disable=import-outside-toplevel
  sub = _fresh(workdir, name)
  t0 = time.perf_counter()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    result = loop.train(config, sub)
  seconds = time.perf_counter() - t0
  unique = {(w.category, str(w.message)): w for w in caught}.values()
  for w in unique:     # shown once each, and (but deprecations) in the report
    warnings.showwarning(w.message, w.category, w.filename, w.lineno)
  noted = sorted(f"{w.category.__name__}: {w.message}" for w in unique
                 if not issubclass(w.category, DeprecationWarning))
  curve = [h for h in result.history if headline in h]
  if not curve:
    raise ValueError(f"run {name!r} logged no `{headline}` (metrics: {sorted(result.history[-1])}).")
  first, last = curve[0], curve[-1]
  best = max(curve, key=lambda h: h[headline])
  spread = f" ± {last[headline + '_std']:.3f}" if headline + "_std" in last else ""
  seeds = config.get("num_seeds", 1)
  text = [
      _describe(result.report),
      "",
      f"| run | metric | start | final (mean{' ± std' if spread else ''}) | best "
      "(update) | updates | seeds | run s |",
      "|---|---|---|---|---|---|---|---|",
      f"| {name} | {headline} | {first[headline]:.3f} | {last[headline]:.3f}{spread} | "
      f"{best[headline]:.3f} ({best['step']}) | {last['step']} | {seeds} | {seconds:.1f} |",
      "",
      f"![{name} {headline}]({name}/curve.png)",
      "",
      f"The run's own report, with the curve's numbers, final metrics and config: "
      f"[{name}/report.md]({name}/report.md).",
  ]
  if noted:
    text += ["", "Warnings during the run:", ""] + [f"- {n}" for n in noted]
  return Part(title, "\n".join(text), seconds)


def _describe(report_path: str) -> str:
  """The set-up paragraph of a `loop` run's report.md (its first paragraph after the title)."""
  with open(report_path) as f:
    paragraphs = f.read().split("\n\n")
  return paragraphs[1].strip() if len(paragraphs) > 1 else ""


def write_report(parts, workdir: str, title: str) -> str:
  """Writes `<workdir>/report.md` from `parts` (a sequence of Part) under `title`; returns its path."""
  total = sum(p.seconds for p in parts)
  lines = [f"# {title}", "", "| part | seconds |", "|---|---|"]
  lines += [f"| {p.title} | {p.seconds:.1f} |" for p in parts]
  lines += [f"| total | {total:.1f} |", ""]
  for p in parts:
    lines += [f"## {p.title}", "", p.markdown.rstrip("\n"), ""]
  path = os.path.join(workdir, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path


def demo(workdir: str, estimator_config: Optional[ml_collections.ConfigDict] = None,
         ppo_config: Optional[ml_collections.ConfigDict] = None,
         grpo_config: Optional[ml_collections.ConfigDict] = None) -> str:
  """The demo suite into `workdir`; returns the report's path.

  Args:
    workdir: output folder (created); gets report.md and one sub-folder per part.
    estimator_config: the estimator comparison's config; None for its default.
    ppo_config: an "env" training config; None for `ppo_cartpole.get_config()`.
    grpo_config: a "tokens" training config; None for `grpo_tokens.get_config()`.
  """
  estimator_config = (estimator_config if estimator_config is not None
                      else estimator_comparison.default_config())
  estimator_comparison.validate(estimator_config)
  ppo_config = ppo_config if ppo_config is not None else ppo_cartpole.get_config()
  grpo_config = grpo_config if grpo_config is not None else grpo_tokens.get_config()
  for arg, config, kind in (("ppo_config", ppo_config, "env"),
                            ("grpo_config", grpo_config, "tokens")):
    validate_lib.validate(config)
    if config.kind != kind:
      raise ValueError(f"`{arg}` must be a {kind!r} config, got kind {config.kind!r}.")
  os.makedirs(workdir, exist_ok=True)
  parts = [
      estimator_part(workdir, estimator_config),
      training_part(f"PPO on gymnax {ppo_config.env_name}", "ppo_cartpole", ppo_config, workdir,
                    "eval_return"),
      training_part(f"{ESTIMATOR_NAMES[grpo_config.estimator]} on the {grpo_config.task} token task",
                    "grpo_tokens", grpo_config, workdir, "eval_success"),
  ]
  return write_report(parts, workdir, "pgx_lab demo")


SUITES: Dict[str, Callable[[str], str]] = {"demo": demo}
