"""Tables and plots for experiment results: markdown reports and learning-curve PNGs."""

import os
from typing import Dict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _runs(results: Dict):
  return {k: v for k, v in results.items() if not k.startswith("_")}


def summary_rows(results: Dict):
  """One row per run: name, start, final mean, std, min, max over seeds, area under the curve."""
  rows = []
  for name, r in _runs(results).items():
    curve = np.asarray(r["curve"])            # [seeds, points]
    final = curve[:, -1]
    rows.append({
        "estimator": name,
        "start": float(curve[:, 0].mean()),
        "final_mean": float(final.mean()),
        "final_std": float(final.std()),
        "final_min": float(final.min()),
        "final_max": float(final.max()),
        "auc": float(curve.mean()),
        "seeds": int(curve.shape[0]),
        "seconds": float(r.get("seconds", float("nan"))),
    })
  return rows


def summary_table(results: Dict) -> str:
  """A markdown table of `summary_rows`, best final mean first."""
  rows = sorted(summary_rows(results), key=lambda r: -r["final_mean"])
  lines = ["| estimator | start | final (mean ± std) | min | max | mean over curve | seeds | run s |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['estimator']} | {r['start']:.3f} | {r['final_mean']:.3f} ± "
                 f"{r['final_std']:.3f} | {r['final_min']:.3f} | {r['final_max']:.3f} | "
                 f"{r['auc']:.3f} | {r['seeds']} | {r['seconds']:.1f} |")
  return "\n".join(lines)


def plot_curves(results: Dict, path: str, xlabel: str, ylabel: str, title: str) -> None:
  """Mean curve with a band of one standard deviation over seeds, one line per run."""
  steps = np.asarray(results["_steps"])
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name, r in _runs(results).items():
    curve = np.asarray(r["curve"])
    mean, std = curve.mean(0), curve.std(0)
    ax.plot(steps, mean, label=name)
    ax.fill_between(steps, mean - std, mean + std, alpha=0.15)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_estimator_report(results: Dict, workdir: str, samples_per_iteration: int) -> str:
  """Writes report.md and learning_curves.png for the estimator comparison; returns the report path."""
  cfg = results["_config"]
  png = os.path.join(workdir, "learning_curves.png")
  plot_curves(results, png, xlabel="iteration (sampled batch)",
              ylabel="exact expected reward",
              title=f"Contextual sequence bandit, {cfg['seeds']} seeds (mean ± std)")
  text = [
      "# Estimator comparison on a contextual sequence bandit",
      "",
      f"Task: {cfg['num_contexts']} contexts, responses of {cfg['length']} tokens over a vocabulary "
      f"of {cfg['vocab_size']}, reward 1 when at least {cfg['threshold']} tokens match the "
      "context's hidden target. Tabular softmax policy, Adam "
      f"(lr {cfg['learning_rate']}), {cfg['iterations']} iterations of "
      f"{samples_per_iteration} responses ({cfg['prompts_per_batch']} prompts x "
      f"{cfg['group_size']}); ratio-based estimators take {cfg['epochs']} gradient steps per "
      "batch. Score: the exact expected reward over contexts (no sampling noise); spread over "
      f"{cfg['seeds']} seeds.",
      "",
      summary_table(results),
      "",
      "![learning curves](learning_curves.png)",
      "",
  ]
  path = os.path.join(workdir, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(text))
  return path
