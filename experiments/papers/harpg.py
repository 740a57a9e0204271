"""N-HARPG (Fatkhullin, Barakat, Kireeva, He, ICML 2023, Alg. 2) against N-PG-IGT.

Claim (PAPERS.md, harpg): same set-up as npg_igt; N-HARPG below N-PG-IGT; fitted log-log slopes of
J* - J against trajectories reported for all methods. Measured on the toys of npg_igt
(experiments/papers/_lqr_pg.py, _cartpole_pg.py) with the paper experiments' batches: 5000 env
steps per gradient and 32 env steps for the Hessian sample (the authors' `run_PG.py`), i.e.
250 + 2 trajectories per iteration on the LQR and 25 + 1 on CartPole; N-HARPG is charged for both
its samples, every step size is tuned on a 5-point grid on separate tuning seeds. CartPole runs
with the authors' policy and baseline (a [32, 32] tanh softmax MLP, garage's linear feature
baseline; the Hessian batch uses the current baseline fit) and with the spec's linear policy.

Rule (session 5, fixed before the MLP runs; it replaces the linear CartPole of the previous rule by
the authors' MLP CartPole, the linear one stays reported with its own verdict): the claim holds
when, on the batched LQR AND on the MLP CartPole, the mean over evaluation seeds of N-HARPG's final
gap (J* - J averaged over the last 10% of the budget) is strictly below N-PG-IGT's (a tie, e.g.
both at a gap of exactly 0, is not "below"). The MLP runs GPOMDP, N-PG-IGT and N-HARPG only
(time). `small` (tests) runs N-PG-IGT and N-HARPG on the two setups of the rule, a few
iterations each. `full` also re-runs the one-trajectory LQR and the linear CartPole (reported with their
own verdicts, not part of the rule) and two diagnostics of the Hessian sample on the LQR and the
MLP CartPole (not part of the rule either; until session 4 they ran on the linear CartPole): N-HARPG with a Hessian batch as large as the
gradient batch (charged in full), and N-HARPG with the paper's Hessian batch but the
Hessian-vector product of the GPOMDP surrogate alone (biased; the authors' code, as read in
`STORMHess_optimizer.step` and `stormhess.py`, forms the score term from the MEAN over steps of
the log-probabilities with the opposite sign, about -1/(steps in the Hessian batch) of the
unbiased term). Slopes: least-squares fit of
log10(mean gap) against log10(trajectories) over the last decade of the budget.
"""

from experiments.papers import Claim
from experiments.papers import _cartpole_pg as toys
from experiments.papers import _lqr_pg as base

_RULE_SETUPS = ("lqr_batch", "cartpole_mlp")
_THREE = ("gpomdp", "npg_igt", "nharpg")
_NAMES = {"nharpg": "N-HARPG", "npg_igt": "N-PG-IGT", "harpg": "HARPG", "gpomdp": "GPOMDP",
          "reinforce": "REINFORCE"}


def verdict(out) -> bool:
  """N-HARPG's mean final gap below N-PG-IGT's in one setup's result."""
  return bool(out["final"]["nharpg"].mean() < out["final"]["npg_igt"].mean())


def _part(name, out) -> str:
  sl = ", ".join(f"{_NAMES[m]} {out['slopes'][m]:.2f}" for m in _NAMES if m in out["slopes"])
  return (f"{name}: N-HARPG {base.fmt(out, 'nharpg')} {'<' if verdict(out) else 'not <'} "
          f"N-PG-IGT {base.fmt(out, 'npg_igt')} (slopes {sl})")


def run(size: str, workdir: str) -> Claim:
  """Runs both toys at `size` ("small" or "full") into `workdir`; returns the Claim."""
  methods = ("npg_igt", "nharpg") if size == "small" else base.METHODS
  outs = toys.run_toys(size, methods, diagnostics=tuple(toys.DIAGNOSTICS),
                       setup_methods={"cartpole_mlp": _THREE} if size == "full" else None)
  holds = all(verdict(outs[s]) for s in _RULE_SETUPS)
  statement = "; ".join(_part(s, outs[s]) for s in _RULE_SETUPS)
  statement += " (final J*-J over eval seeds; paper batches, tuned steps)"
  statement += toys.descriptive_tail(outs, _NAMES, _part)
  for suffix, what in (("_hb", "Hessian batch = gradient batch"),
                       ("_hvp", "surrogate HVP only (biased)")):
    diag = [f"{s[:-len(suffix)]} {base.fmt(outs[s], 'nharpg')}" for s in toys.DIAGNOSTICS
            if s in outs and s.endswith(suffix)]
    if diag:
      statement += f"; diagnostic, N-HARPG with {what}: {', '.join(diag)}"
  artifacts = toys.save(outs, workdir, "harpg_metrics.json")
  return Claim(holds=holds, statement=statement, table=toys.tables(outs), artifacts=artifacts)
