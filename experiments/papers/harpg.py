"""N-HARPG (Fatkhullin, Barakat, Kireeva, He, ICML 2023, Alg. 2) against N-PG-IGT, on LQR.

Claim (PAPERS.md, harpg): same set-up as npg_igt; N-HARPG below N-PG-IGT; fitted log-log slopes of
J* - J against trajectories reported for all methods. Measured on the 1-D toy of the spec
(experiments/papers/_lqr_pg.py: N-HARPG samples two trajectories per iteration, one at theta_t and
a fresh one at the random interpolation point for the score-function Hessian, and is charged for
both; every method's step size is tuned on a 5-point grid on separate tuning seeds; exact J).
The claim holds when the mean (over evaluation seeds) final gap of N-HARPG is below N-PG-IGT's.
Slopes: least-squares fit of log10(mean gap) against log10(trajectories) over the last decade of
the budget. Sizes as in npg_igt.
"""

import os

from experiments.papers import Claim
from experiments.papers import _lqr_pg


def run(size: str, workdir: str) -> Claim:
  """Runs the LQR comparison at `size` ("small" or "full") into `workdir`; returns the Claim."""
  # small (tests) runs only the methods the claim compares; full runs all five.
  methods = ("gpomdp", "npg_igt", "nharpg") if size == "small" else _lqr_pg.METHODS
  out = _lqr_pg.run_all(size, workdir, methods)
  fin = {m: out["final"][m].mean() for m in out["final"]}
  holds = bool(fin["nharpg"] < fin["npg_igt"])
  budget = _lqr_pg.SIZES[size]["budget"]
  n = out["final"]["nharpg"].size
  sl = out["slopes"]
  names = {"nharpg": "N-HARPG", "npg_igt": "N-PG-IGT", "harpg": "HARPG", "gpomdp": "GPOMDP",
           "reinforce": "REINFORCE"}
  slopes = ", ".join(f"{names[m]} {sl[m]:.2f}" for m in names if m in sl)
  statement = (f"N-HARPG J*-J {_lqr_pg.fmt(out, 'nharpg')} {'<' if holds else 'not <'} "
               f"N-PG-IGT {_lqr_pg.fmt(out, 'npg_igt')} (1-D LQR, {budget} trajectories, {n} eval "
               f"seeds); log-log slopes: {slopes}")
  metrics = _lqr_pg.write_metrics(out, os.path.join(workdir, "harpg_metrics.json"))
  return Claim(holds=holds, statement=statement, table=_lqr_pg.markdown_table(out),
               artifacts=(out["plot"], metrics))
