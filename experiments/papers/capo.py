"""CAPO (Melo, Abate & Gal 2025, arXiv 2510.00819): the driver of the two set-ups of the claim.

Claim (PAPERS.md `capo`): "At a learning rate 10-30x the stable one, GRPO's reward collapses while
CAPO's keeps rising, rejecting under 10% of tokens."

Two set-ups, each with its own verdict (rules in their modules' docstrings):
  transformer  `_capo_lm.py`: the small causal transformer on the `reverse` token task (LR 20x the
               stable one). CAPO's model covers only the LM head of a 2-layer network there.
  bandit       `_capo_bandit.py`: the spec's own toy (llm_post_training.md sec. 7 (d)), a linear
               softmax policy (logits = h^T W, no bias) on a contextual bandit with K = 50 actions,
               where CAPO's head model is the whole model (LR 10x and 30x the swept stable one).
Rule for `holds` (written 2026-11-25 before the bandit set-up was first run): the module's `holds`
is True only if the claim holds on BOTH set-ups; the statement and the table give each verdict.

The transformer set-up's names (`capo_inputs`, `forward`, `make_update`, ...) are re-exported here
for `benchmarks/capo.py`.
"""

import os
import time

from experiments.papers import Claim
from experiments.papers import save_artifacts
from experiments.papers import _capo_bandit
from experiments.papers import _capo_lm
from experiments.papers._capo_lm import LR  # noqa: F401  (re-exported)
from experiments.papers._capo_lm import METHODS  # noqa: F401
from experiments.papers._capo_lm import MULT  # noqa: F401
from experiments.papers._capo_lm import PAPER_TAU  # noqa: F401
from experiments.papers._capo_lm import QUANTILE  # noqa: F401
from experiments.papers._capo_lm import SIZES
from experiments.papers._capo_lm import WARMUP  # noqa: F401
from experiments.papers._capo_lm import calibrate  # noqa: F401
from experiments.papers._capo_lm import capo_inputs  # noqa: F401
from experiments.papers._capo_lm import forward  # noqa: F401
from experiments.papers._capo_lm import head_vs_full  # noqa: F401
from experiments.papers._capo_lm import lr_factor  # noqa: F401
from experiments.papers._capo_lm import make_update  # noqa: F401
from experiments.papers._capo_lm import train_all  # noqa: F401


def plot_bandit(curves, ax_j, ax_rej):
  """Draws the J curves (mean over seeds) and the CAPO rejection rate per update on two axes."""
  color = {"grpo_stable": "C0", "grpo_10x": "C1", "capo_10x": "C2", "grpo_30x": "C3",
           "capo_30x": "C4"}
  for name, c in curves.items():
    base = name.split("/")[0]
    style = "--" if name.endswith("/const") else ":" if "/" in name else "-"
    if name.endswith("/const") or name.endswith("cal_empty"):
      continue
    ax_j.plot(c["j"].mean(0), style, color=color[base], label=name)
    if base.startswith("capo"):
      ax_rej.plot(100 * (c["rejected"] / c["tokens"]).mean(0), style, color=color[base],
                  label=name)
  ax_j.set(xlabel="update", ylabel="exact J", title="bandit: exact reward (mean over seeds)")
  ax_j.legend(fontsize=7)
  ax_rej.set(xlabel="update", ylabel="% tokens rejected", title="bandit: CAPO rejections")
  ax_rej.legend(fontsize=7)


def run_bandit(size: str, workdir: str) -> Claim:
  """The bandit set-up alone at `size` ("small" or "full"): its Claim (verdict, statement, table,
  plot and metrics JSON in `workdir`)."""
  start = time.perf_counter()
  verdict, statement, table, curves, info = _capo_bandit.run_bandit(size)
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  plot_bandit(curves, axes[0], axes[1])
  fig.tight_layout()
  os.makedirs(workdir, exist_ok=True)
  metrics = dict(info, j_mean={k: c["j"].mean(0).tolist() for k, c in curves.items()})
  paths = save_artifacts(workdir, fig, metrics, plot_name="capo_bandit.png",
                         metrics_name="capo_bandit.json")
  statement += f"; {time.perf_counter() - start:.0f} s"
  return Claim(holds=bool(verdict), statement=statement, table=table, artifacts=paths)


def _verdict(holds: bool) -> str:
  return "holds" if holds else "fails"


def run(size: str, workdir: str) -> Claim:
  """Runs both set-ups at `size` ("small" or "full") in `workdir`; returns the combined Claim
  (holds only if both hold)."""
  if size not in SIZES:
    raise ValueError(f"`size` must be one of {tuple(SIZES)}, got {size!r}.")
  start = time.perf_counter()
  lm = _capo_lm.run(size, workdir)
  bandit = run_bandit(size, workdir)
  statement = (f"transformer {_verdict(lm.holds)}: {lm.statement} | bandit "
               f"{_verdict(bandit.holds)}: {bandit.statement} | total "
               f"{time.perf_counter() - start:.0f} s")
  table = (f"Transformer set-up (reverse task): claim {_verdict(lm.holds)}.\n\n{lm.table}\n\n"
           f"Bandit set-up (linear softmax policy, exact head model): claim "
           f"{_verdict(bandit.holds)}.\n\n{bandit.table}")
  return Claim(holds=lm.holds and bandit.holds, statement=statement, table=table,
               artifacts=lm.artifacts + bandit.artifacts)
