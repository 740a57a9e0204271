"""N-PG-IGT (Fatkhullin, Barakat, Kireeva, He, ICML 2023, Alg. 1) against REINFORCE and GPOMDP.

Claim (PAPERS.md, npg_igt): on LQR with a Gaussian linear policy, at equal trajectories, J* - J of
N-PG-IGT is below REINFORCE/GPOMDP. Measured on the 1-D toy of the spec (experiments/papers/
_lqr_pg.py: one trajectory per iteration, each method's step size tuned on a 5-point grid on
separate tuning seeds, exact J). The claim holds when the mean (over evaluation seeds) final gap
of N-PG-IGT is below both baselines'. `small` (tests): 300 trajectories, the 2 middle points of
each grid, 2 tuning + 3 evaluation seeds, only the three methods compared; `full`: 20000
trajectories, 5-point grids, 10 tuning + 20 evaluation seeds, all five methods of _lqr_pg.
"""

import os

from experiments.papers import Claim
from experiments.papers import _lqr_pg


def run(size: str, workdir: str) -> Claim:
  """Runs the LQR comparison at `size` ("small" or "full") into `workdir`; returns the Claim."""
  # small (tests) runs only the methods the claim compares; full runs all five.
  methods = ("reinforce", "gpomdp", "npg_igt") if size == "small" else _lqr_pg.METHODS
  out = _lqr_pg.run_all(size, workdir, methods)
  fin = {m: out["final"][m].mean() for m in out["final"]}
  holds = bool(fin["npg_igt"] < fin["reinforce"] and fin["npg_igt"] < fin["gpomdp"])
  budget = _lqr_pg.SIZES[size]["budget"]
  n = out["final"]["npg_igt"].size
  statement = (f"N-PG-IGT J*-J {_lqr_pg.fmt(out, 'npg_igt')} {'<' if holds else 'not <'} "
               f"REINFORCE {_lqr_pg.fmt(out, 'reinforce')} / GPOMDP {_lqr_pg.fmt(out, 'gpomdp')} "
               f"(1-D LQR, {budget} trajectories, {n} eval seeds, tuned steps)")
  metrics = _lqr_pg.write_metrics(out, os.path.join(workdir, "npg_igt_metrics.json"))
  return Claim(holds=holds, statement=statement, table=_lqr_pg.markdown_table(out),
               artifacts=(out["plot"], metrics))
