"""N-PG-IGT (Fatkhullin, Barakat, Kireeva, He, ICML 2023, Alg. 1) against REINFORCE and GPOMDP.

Claim (PAPERS.md, npg_igt): on LQR with a Gaussian linear policy, at equal trajectories, J* - J of
N-PG-IGT is below REINFORCE/GPOMDP; issue 8 adds CartPole. Measured on two toys
(experiments/papers/_lqr_pg.py, _cartpole_pg.py): the 1-D LQR of the spec (exact J) and gymnax
CartPole-v1 cut at 200 steps with a linear softmax policy (Monte Carlo J), each with the paper
experiments' batches (5000 env steps per gradient: 250 LQR / 25 CartPole trajectories), every
method charged every trajectory it samples, every step size tuned on a 5-point grid on tuning
seeds separate from the evaluation seeds.

Rule (fixed before the runs): the claim holds when, on the LQR AND on CartPole (both with the
paper's batches), the mean over evaluation seeds of N-PG-IGT's final gap (J* - J averaged over the
last 10% of the budget) is below both REINFORCE's and GPOMDP's. `full` also re-runs the earlier
one-trajectory LQR comparison (the theory's regime); it is reported, with its own verdict, but is
not part of the rule. `small` (tests): a few iterations of the two batched setups, three methods.
"""

from experiments.papers import Claim
from experiments.papers import _cartpole_pg as toys
from experiments.papers import _lqr_pg as base

_RULE_SETUPS = ("lqr_batch", "cartpole")


def verdict(out) -> bool:
  """N-PG-IGT's mean final gap below REINFORCE's and GPOMDP's in one setup's result."""
  fin = {m: out["final"][m].mean() for m in out["final"]}
  return bool(fin["npg_igt"] < fin["reinforce"] and fin["npg_igt"] < fin["gpomdp"])


def _part(name, out) -> str:
  ok = verdict(out)
  return (f"{name}: N-PG-IGT {base.fmt(out, 'npg_igt')} {'<' if ok else 'not <'} REINFORCE "
          f"{base.fmt(out, 'reinforce')} / GPOMDP {base.fmt(out, 'gpomdp')}")


def run(size: str, workdir: str) -> Claim:
  """Runs both toys at `size` ("small" or "full") into `workdir`; returns the Claim."""
  methods = ("reinforce", "gpomdp", "npg_igt") if size == "small" else base.METHODS
  outs = toys.run_toys(size, methods)
  holds = all(verdict(outs[s]) for s in _RULE_SETUPS)
  n = outs["cartpole"]["final"]["npg_igt"].size
  statement = "; ".join(_part(s, outs[s]) for s in _RULE_SETUPS)
  statement += f" (final J*-J, eval seeds: LQR {outs['lqr_batch']['final']['npg_igt'].size}, " \
               f"CartPole {n}; paper batches, tuned steps)"
  if "lqr_single" in outs:
    statement += f"; not in the rule, one-trajectory {_part('LQR', outs['lqr_single'])}"
  artifacts = toys.save(outs, workdir, "npg_igt_metrics.json")
  return Claim(holds=holds, statement=statement, table=toys.tables(outs), artifacts=artifacts)
