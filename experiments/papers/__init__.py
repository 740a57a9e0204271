"""The paper registry: every seed paper's key, and the `Claim` each paper module returns.

One module per paper, `experiments/papers/<key>.py`, exposes

    run(size: str, workdir: str) -> Claim      # size is "small" (tests, ~20 s) or "full"

and `python -m experiments.reproduce --paper=<key>` runs it (the contract is in PAPERS.md of the
shared folder: the command exits 0 only when the claim holds, and its last line is
`claim holds: <statement>` or `claim fails: <statement>`). The keys, paper names and spec files
below are PAPERS.md's table; `tests/test_reproduce.py` checks them against it when it is there.
"""

import dataclasses
import importlib
import importlib.util
import os
import sys
from typing import NamedTuple, Tuple

import numpy as np

SIZES = ("small", "full")


class Paper(NamedTuple):
  """One row of PAPERS.md: `key` (module name), `name` (the paper), `spec` (file in specs/)."""
  key: str
  name: str
  spec: str


_TABLE = (
    ("alol", "A-LoL, advantage-based offline PG", "llm"),
    ("npg_igt", "N-PG-IGT", "rl"),
    ("harpg", "(N)-HARPG", "rl"),
    ("vade", "VADE sampler", "llm"),
    ("bgpo", "BGPO for masked diffusion LMs", "llm"),
    ("subpo", "SubRL / SubPO", "rl"),
    ("afgr", "Multi-view active recognition", "rl"),
    ("d3s", "D^3S down-sampling", "llm"),
    ("hpt", "Unified estimator + HPT", "llm"),
    ("copg", "Contrastive PG", "llm"),
    ("props", "PROPS", "rl"),
    ("capo", "CAPO", "llm"),
    ("cdsa", "CDSA", "diffusion"),
    ("otr", "One-token rollout", "llm"),
    ("tempsamp_r1", "TempSamp-R1", "llm"),
    ("demo_reg", "Demonstration-regularized RL", "rl"),
    ("pgd", "Policy-guided diffusion", "diffusion"),
    ("ac_optimal", "Optimistic actor-critic (optimal sample efficiency)", "rl"),
    ("rpo", "RPO (DPO + SFT regulariser)", "llm"),
    ("gpc", "General policy composition", "diffusion"),
    ("tq_saco", "Dataset perspective: TQ and SACo", "rl"),
    ("traj_weighting", "Trajectory weighting (RW/AW)", "rl"),
    ("beso", "BESO score-based diffusion policy", "diffusion"),
    ("text2grad", "Text2Grad span rewards", "llm"),
    ("mcts_dpo", "MCTS step-level DPO", "llm"),
    ("groove", "GROOVE (LPG + environment design)", "rl"),
    ("ctrl", "CTRL conditional control by RL", "diffusion"),
    ("pcl", "Prompt curriculum learning", "llm"),
    ("hdpo", "HDPO inventory control", "rl"),
    ("empg", "Entropy-modulated PG", "llm"),
    ("dsp", "Directional stimulus prompting", "llm"),
    ("prdc", "PRDC", "rl"),
    ("craft_gui", "CRAFT-GUI curriculum GRPO", "llm"),
    ("dsrl", "DSRL latent-noise steering", "diffusion"),
)

PAPERS = {key: Paper(key, name, spec) for key, name, spec in _TABLE}


@dataclasses.dataclass(frozen=True)
class Claim:
  """What a paper module's `run` returns: the measured claim and where its evidence is.

  Attributes:
    holds: whether the measured numbers satisfy the claim (a Python bool; numpy / JAX scalar
      booleans are converted).
    statement: the measured claim in one line, numbers included, e.g. "N-HARPG J*-J 0.012 ±
      0.003 < N-PG-IGT 0.031 ± 0.006 (5 seeds)".
    table: the measured numbers as a markdown table.
    artifacts: paths of the files the run wrote (plots, metrics), each existing.
  """
  holds: bool
  statement: str
  table: str
  artifacts: Tuple[str, ...] = ()

  def __post_init__(self):
    holds = np.asarray(self.holds)
    if holds.shape != () or holds.dtype != np.bool_:
      raise ValueError(f"`holds` must be a scalar bool, got {self.holds!r}.")
    object.__setattr__(self, "holds", bool(holds))
    if not isinstance(self.statement, str) or not self.statement.strip():
      raise ValueError(f"`statement` must be a non-empty string, got {self.statement!r}.")
    if "\n" in self.statement:
      raise ValueError(f"`statement` must be one line (it ends the output), got {self.statement!r}.")
    if not isinstance(self.table, str):
      raise ValueError(f"`table` must be a markdown string, got {type(self.table).__name__}.")
    if isinstance(self.artifacts, (str, bytes)):
      raise ValueError(f"`artifacts` must be a sequence of paths, got the string {self.artifacts!r}.")
    artifacts = tuple(os.fspath(p) for p in self.artifacts)
    object.__setattr__(self, "artifacts", artifacts)


def save_artifacts(workdir: str, fig, metrics: dict, plot_name: str = "curves.png",
                   metrics_name: str = "metrics.json") -> Tuple[str, str]:
  """Writes a paper module's figure (closing it) and its JSON metrics into `workdir`; returns their
  paths, for `Claim.artifacts`. Tuples in `metrics` are written as lists."""
  import json  # pylint: disable=import-outside-toplevel
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  plot = os.path.join(workdir, plot_name)
  fig.savefig(plot, dpi=100)
  plt.close(fig)
  path = os.path.join(workdir, metrics_name)
  with open(path, "w") as f:
    json.dump(metrics, f, default=list)
  return plot, path


def module_name(key: str) -> str:
  """The import name of paper `key`'s module (`key`: a registry key, not checked here)."""
  return f"{__name__}.{key}"


def check_key(key: str) -> Paper:
  """Returns the registry entry of `key`; raises ValueError naming `key` if it is not a key."""
  if key not in PAPERS:
    raise ValueError(f"unknown paper key `key`={key!r}; known keys: {', '.join(PAPERS)}.")
  return PAPERS[key]


def module_exists(key: str) -> bool:
  """Whether paper `key` (a registry key) has its module `experiments/papers/<key>.py`."""
  check_key(key)
  name = module_name(key)
  if name in sys.modules:
    return True
  return importlib.util.find_spec(name) is not None


def available() -> Tuple[str, ...]:
  """The registry keys whose module exists, in PAPERS.md order."""
  return tuple(key for key in PAPERS if module_exists(key))


def load(key: str):
  """Imports paper `key`'s module: ValueError for an unknown key, ModuleNotFoundError if none yet."""
  check_key(key)
  if not module_exists(key):
    raise ModuleNotFoundError(f"paper {key!r} has no module yet (experiments/papers/{key}.py).",
                              name=module_name(key))
  module = importlib.import_module(module_name(key))
  if not callable(getattr(module, "run", None)):
    raise ValueError(f"{module_name(key)} has no function `run(size, workdir) -> Claim`.")
  return module


def run(key: str, size: str, workdir: str) -> Claim:
  """Runs paper `key` at `size` ("small" or "full") writing into `workdir`; returns its Claim.

  Raises ValueError naming the argument for an unknown key or size, ModuleNotFoundError when the
  key has no module yet, and ValueError when the module's `run` does not return a Claim.
  """
  if size not in SIZES:
    raise ValueError(f"`size` must be one of {SIZES}, got {size!r}.")
  module = load(key)
  os.makedirs(workdir, exist_ok=True)
  claim = module.run(size, workdir)
  if not isinstance(claim, Claim):
    raise ValueError(f"{module_name(key)}.run returned {type(claim).__name__}, expected "
                     "experiments.papers.Claim.")
  missing = [p for p in claim.artifacts if not os.path.exists(p)]
  if missing:
    raise ValueError(f"{module_name(key)}.run listed artifacts that do not exist: {missing}.")
  return claim
