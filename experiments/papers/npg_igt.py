"""N-PG-IGT (Fatkhullin, Barakat, Kireeva, He, ICML 2023, Alg. 1) against REINFORCE and GPOMDP.

Claim (PAPERS.md, npg_igt): on LQR with a Gaussian linear policy, at equal trajectories, J* - J of
N-PG-IGT is below REINFORCE/GPOMDP; issue 8 adds CartPole. Measured on two toys
(experiments/papers/_lqr_pg.py, _cartpole_pg.py): the 1-D LQR of the spec (exact J) and gymnax
CartPole-v1 cut at 200 steps (Monte Carlo J), each with the paper experiments' batches (5000 env
steps per gradient: 250 LQR / 25 CartPole trajectories), every method charged every trajectory it
samples, every step size tuned on a 5-point grid on tuning seeds separate from the evaluation
seeds. CartPole runs twice: with the authors' policy and baseline (a [32, 32] tanh softmax MLP and
garage's linear feature baseline, read from their `run_PG.py`, whose README says it is the code of
the paper's experiments section) and with the spec's linear softmax policy (no baseline).

Rule (session 5, fixed before the MLP runs; it replaces the linear CartPole of the previous rule by
the authors' MLP CartPole, the linear one stays reported with its own verdict): the claim holds
when, on the batched LQR AND on the MLP CartPole, the mean over evaluation seeds of N-PG-IGT's
final gap (J* - J averaged over the last 10% of the budget) is strictly below both REINFORCE's and
GPOMDP's (a tie, e.g. all at a gap of exactly 0 on CartPole, is not "below"). `full` also
re-runs the one-trajectory LQR (the theory's regime) and the linear CartPole; both are reported,
with their own verdicts, but are not part of the rule. The MLP runs REINFORCE, GPOMDP and N-PG-IGT
only (time). `small` (tests): a few iterations of the two setups of the rule, three methods.
"""

from experiments.papers import Claim
from experiments.papers import _cartpole_pg as toys
from experiments.papers import _lqr_pg as base

_RULE_SETUPS = ("lqr_batch", "cartpole_mlp")
_THREE = ("reinforce", "gpomdp", "npg_igt")
_NAMES = {"reinforce": "REINFORCE", "gpomdp": "GPOMDP", "npg_igt": "N-PG-IGT"}


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
  methods = _THREE if size == "small" else base.METHODS
  outs = toys.run_toys(size, methods, setup_methods={"cartpole_mlp": _THREE})
  holds = all(verdict(outs[s]) for s in _RULE_SETUPS)
  statement = "; ".join(_part(s, outs[s]) for s in _RULE_SETUPS)
  statement += (f" (final J*-J, eval seeds: LQR {outs['lqr_batch']['final']['npg_igt'].size}, "
                f"MLP CartPole {outs['cartpole_mlp']['final']['npg_igt'].size}; paper batches, "
                "tuned steps)")
  statement += toys.descriptive_tail(outs, _NAMES, _part)
  artifacts = toys.save(outs, workdir, "npg_igt_metrics.json")
  return Claim(holds=holds, statement=statement, table=toys.tables(outs), artifacts=artifacts)
