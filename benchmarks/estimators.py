"""Estimator loss+gradient step: pgx_lab against rlax and plain-JAX peers of the same maths.

    python -m benchmarks.estimators [--batch=16,256] [--tokens=64,512] [--repeats=15] \
        [--modes=logp,params] [--cases=ppo,...] [--min-sample-ms=20] \
        [--out=results/bench/estimators.json]

Each case jits `jax.value_and_grad` of one loss and times the step after compilation and
warm-up, every call ended by `block_until_ready`. The functions of a case are timed round-robin:
each of `--repeats` rounds takes one sample of each function, a sample being the mean of enough
consecutive calls to last about `--min-sample-ms`. Reported: the median time per call, and the
ratio pgx_lab / peer as the median over rounds of the per-round ratio (so drift of a shared
machine between rounds cancels). Before timing, every peer's loss and gradient are checked against
pgx_lab's (`np.testing.assert_allclose`), so a ratio always compares one computation.

Two modes:
  logp:   the gradient w.r.t. `logp[B, T]` itself: the estimator alone.
  params: the gradient w.r.t. a parameter table W[S, V] (S = 1024 states, V = 64 actions):
          logits = W[states] -> log_softmax -> gather the taken actions -> loss. A realistic step
          in which the estimator is a small part.
pgx_lab is timed as its loss alone (metrics unused, so XLA drops them) and, in logp mode, also as
loss plus its metrics dict (returned through `has_aux`, as a training step that logs them would).

Cases (pgx_lab | peers):
  ppo        presets.ppo(whiten=False), token-mean    | rlax.clipped_surrogate_pg_loss vmapped
                                                        over rows; a plain-JAX one-liner
  reinforce  presets.reinforce() (A = R_i, sum_t / B) | rlax.policy_gradient_loss vmapped (it
                                                        takes logits, so params mode only); plain
  gae        advantages.gae (forward, no mask)        | rlax.truncated_generalized_advantage_
                                                        estimation vmapped over rows
  grpo       presets.grpo("grpo", kl_beta=0.04)       | plain JAX: reshape [N, G] group stats,
                                                        PPO clip, k3 KL, seq-mean-token-mean
  dr_grpo    presets.grpo("dr_grpo")                  | plain JAX: group-centred A, sum / (B T)
  gspo       presets.gspo()                           | plain JAX: sequence ratio, clip 3e-4/4e-4
"""

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

with warnings.catch_warnings():
  warnings.simplefilter("ignore", DeprecationWarning)
  import rlax  # pylint: disable=g-import-not-at-top

from benchmarks import common
from pgx_lab import types
from pgx_lab.estimators import advantages
from pgx_lab.estimators import likelihood
from pgx_lab.estimators import presets

sg = jax.lax.stop_gradient

VOCAB = 64          # V: actions per step.
STATES = 1024       # S: rows of the parameter table (params mode).
GROUP = 8           # G: responses per prompt (GRPO family); B must be a multiple of G.
PPO_EPS = 0.2
KL_BETA = 0.04
GSPO_EPS = (3e-4, 4e-4)
GAE_LAMBDA = 0.95
GRPO_STD_EPS = 1e-6  # pgx_lab's default: (R - mean) / (std + eps).


# ----------------------------------------------------------------------------------------------
# Data.


def plain_logp(w, states, actions):
  """log pi(a | s) of the taken actions from the table W[S, V]; [B, T]."""
  logits = w[states]
  logp = jax.nn.log_softmax(logits, axis=-1)
  return jnp.take_along_axis(logp, actions[..., None], axis=-1)[..., 0]


def pgx_logp(w, states, actions):
  """The same through pgx_lab's likelihood part."""
  return likelihood.token_logp(w[states], actions)


def make_data(b: int, t: int, seed: int = 0):
  """Arrays of one batch: response mask with random lengths in [T/4, T], near-on-policy old_logp."""
  if b % GROUP:
    raise ValueError(f"--batch entries must be multiples of the group size {GROUP}, got {b}.")
  rng = np.random.default_rng(seed)
  f32 = np.float32
  lengths = rng.integers(max(1, t // 4), t + 1, size=b)
  mask = (np.arange(t)[None, :] < lengths[:, None]).astype(f32)
  w = (0.5 * rng.standard_normal((STATES, VOCAB))).astype(f32)
  states = rng.integers(0, STATES, (b, t)).astype(np.int32)
  actions = rng.integers(0, VOCAB, (b, t)).astype(np.int32)
  logp0 = np.asarray(jax.jit(plain_logp)(w, states, actions))
  noise = rng.standard_normal((3, b, t)).astype(f32)
  data = {
      "mask": mask,
      "states": states,
      "actions": actions,
      # PPO/GRPO: a few percent of tokens outside the 0.2 clip range.
      "old_logp": logp0 + 0.1 * noise[0],
      # GSPO's range is 3e-4: a smaller behaviour gap so some sequences stay unclipped.
      "old_logp_gspo": logp0 + 0.005 * noise[1],
      "ref_logp": logp0 + 0.1 * noise[2],
      "token_adv": (rng.standard_normal((b, t)) * mask).astype(f32),
      "seq_rewards": rng.integers(0, 2, b).astype(f32),
      "group_ids": (np.arange(b) // GROUP).astype(np.int32),
      "step_rewards": rng.standard_normal((b, t)).astype(f32),
      "values": rng.standard_normal((b, t + 1)).astype(f32),
      "discounts": (0.99 * (rng.random((b, t)) > 0.01)).astype(f32),
  }
  data = {k: jnp.asarray(v) for k, v in data.items()}
  return jnp.asarray(w), jnp.asarray(logp0), data


# ----------------------------------------------------------------------------------------------
# pgx_lab losses: `loss(logp, d) -> (scalar, metrics)`.


def _pgx(estimator, **fields):
  """A loss `f(logp, d)` calling `estimator` on a SequenceBatch of the named fields of `d`."""

  def loss(logp, d):
    batch = types.SequenceBatch(mask=d["mask"], **{k: d[v] for k, v in fields.items()})
    return estimator(logp, batch)

  return loss


PGX = {
    "ppo": _pgx(presets.ppo(PPO_EPS, whiten=False), old_logp="old_logp", advantages="token_adv"),
    "reinforce": _pgx(presets.reinforce(), rewards="seq_rewards"),
    "grpo": _pgx(presets.grpo("grpo", eps_low=PPO_EPS, kl_beta=KL_BETA), old_logp="old_logp",
                 ref_logp="ref_logp", rewards="seq_rewards", group_ids="group_ids"),
    "dr_grpo": _pgx(presets.grpo("dr_grpo", eps_low=PPO_EPS), old_logp="old_logp",
                    rewards="seq_rewards", group_ids="group_ids"),
    "gspo": _pgx(presets.gspo(*GSPO_EPS), old_logp="old_logp_gspo", rewards="seq_rewards",
                 group_ids="group_ids"),
}


# ----------------------------------------------------------------------------------------------
# Peers, written straight from the formulas: `loss(logp, d) -> scalar`.


def _ratio(logp, old, m):
  return jnp.exp(jnp.where(m > 0, logp - old, 0.0))


def _surrogate(ratio, adv, eps_low, eps_high):
  """-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) (Schulman et al. 2017, eq. 7)."""
  return -jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv)


def _group_adv(r, scale):
  """GRPO's advantage with groups as contiguous rows: reshape [N, G], population std."""
  g = r.reshape(-1, GROUP)
  a = g - g.mean(axis=1, keepdims=True)
  if scale:
    a = a / (g.std(axis=1, keepdims=True) + GRPO_STD_EPS)
  return sg(a.reshape(-1))


def plain_ppo(logp, d):
  m = d["mask"]
  r = _ratio(logp, d["old_logp"], m)
  return jnp.sum(_surrogate(r, d["token_adv"], PPO_EPS, PPO_EPS) * m) / jnp.sum(m)


def rlax_ppo(logp, d):
  m = d["mask"]
  r = _ratio(logp, d["old_logp"], m)
  per_row = jax.vmap(rlax.clipped_surrogate_pg_loss, (0, 0, None))(r, d["token_adv"] * m, PPO_EPS)
  # rlax averages over all T steps of a row; masked steps have A = 0, so rescale to a token mean.
  return jnp.mean(per_row) * m.size / jnp.sum(m)


def plain_reinforce(logp, d):
  m = d["mask"]
  return -jnp.sum(d["seq_rewards"][:, None] * jnp.where(m > 0, logp, 0.0) * m) / m.shape[0]


def rlax_reinforce_logits(logits, d):
  m = d["mask"]
  adv = jnp.broadcast_to(d["seq_rewards"][:, None], m.shape)
  per_row = jax.vmap(rlax.policy_gradient_loss)(logits, d["actions"], adv, m)
  return jnp.mean(per_row) * m.shape[1]  # rlax's mean over T -> the sum over T.


def plain_grpo(logp, d):
  m = d["mask"]
  adv = _group_adv(d["seq_rewards"], True)[:, None]
  r = _ratio(logp, d["old_logp"], m)
  kl = jnp.where(m > 0, d["ref_logp"] - logp, 0.0)
  per_token = _surrogate(r, adv, PPO_EPS, PPO_EPS) + KL_BETA * (jnp.exp(kl) - kl - 1.0)
  return jnp.mean(jnp.sum(per_token * m, axis=1) / jnp.sum(m, axis=1))


def plain_dr_grpo(logp, d):
  m = d["mask"]
  adv = _group_adv(d["seq_rewards"], False)[:, None]
  r = _ratio(logp, d["old_logp"], m)
  return jnp.sum(_surrogate(r, adv, PPO_EPS, PPO_EPS) * m) / m.size


def plain_gspo(logp, d):
  m = d["mask"]
  adv = _group_adv(d["seq_rewards"], True)
  log_s = jnp.sum(jnp.where(m > 0, logp - d["old_logp_gspo"], 0.0), axis=1) / jnp.sum(m, axis=1)
  return jnp.mean(_surrogate(jnp.exp(log_s), adv, *GSPO_EPS))


# case -> [(peer name, peer loss, whether the loss takes logits rather than logp)].
GRAD_CASES = {
    "ppo": [("rlax", rlax_ppo, False), ("plain", plain_ppo, False)],
    "reinforce": [("rlax", rlax_reinforce_logits, True), ("plain", plain_reinforce, False)],
    "grpo": [("plain", plain_grpo, False)],
    "dr_grpo": [("plain", plain_dr_grpo, False)],
    "gspo": [("plain", plain_gspo, False)],
}
CASES = ("ppo", "reinforce", "gae", "grpo", "dr_grpo", "gspo")


# ----------------------------------------------------------------------------------------------
# Steps.


def grad_step(loss, mode, *, has_aux=False, takes_logits=False, pgx=False):
  """A jitted `step(x, d) -> (value, grad)` with x = logp [B, T] or the table W [S, V]."""
  if mode == "logp":
    f = loss
  elif takes_logits:
    f = lambda w, d: loss(w[d["states"]], d)
  else:
    to_logp = pgx_logp if pgx else plain_logp
    f = lambda w, d: loss(to_logp(w, d["states"], d["actions"]), d)
  return jax.jit(jax.value_and_grad(f, has_aux=has_aux))


def loss_only(pgx_loss):
  return lambda logp, d: pgx_loss(logp, d)[0]


def pgx_gae(d):
  return advantages.gae(d["step_rewards"], d["values"], d["discounts"], GAE_LAMBDA)


def rlax_gae(d):
  gae = jax.vmap(rlax.truncated_generalized_advantage_estimation, (0, 0, None, 0))
  return gae(d["step_rewards"], d["discounts"], GAE_LAMBDA, d["values"])


# ----------------------------------------------------------------------------------------------
# Timing.


def _block(tree):
  return jax.tree_util.tree_map(lambda a: a.block_until_ready(), tree)


def time_round_robin(fns, args, repeats, min_sample_s, warmup=2):
  """Compiles and warms each of `fns` (name -> jitted fn), then times them round-robin.

  One sample of a function is the mean time of `n` consecutive calls, each ended by
  `block_until_ready`, with `n` chosen after warm-up so that a sample lasts about `min_sample_s`
  (1 for slow steps): sub-millisecond steps are otherwise lost in timer and scheduler jitter.
  Each of `repeats` rounds takes one sample of every function in turn.

  Returns (outputs of the first call, {name: [seconds per call, one per round]},
  {name: seconds of the first call, compilation included}, {name: calls per sample}).
  """
  outs, first, inner = {}, {}, {}
  for name, fn in fns.items():
    t0 = time.perf_counter()
    outs[name] = _block(fn(*args))
    first[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(warmup):
      _block(fn(*args))
    per_call = (time.perf_counter() - t0) / warmup
    inner[name] = int(min(1000, max(1, math.ceil(min_sample_s / max(per_call, 1e-7)))))
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      for _ in range(inner[name]):
        _block(fn(*args))
      times[name].append((time.perf_counter() - t0) / inner[name])
  return outs, times, first, inner


def _check_same(case, mode, peer, ref, out, rtol=2e-4, atol=1e-6):
  """Asserts that a peer's (value, grad) equals pgx_lab's; the grad tolerance scales with its size."""
  for what, a, b in zip(("value", "grad"), ref, out):
    a, b = np.asarray(a), np.asarray(b)
    tol = atol + rtol * float(np.max(np.abs(a)))
    np.testing.assert_allclose(b, a, rtol=rtol, atol=tol,
                               err_msg=f"{case}/{mode}: {peer} {what} differs from pgx_lab's")


def run_case(case, mode, x, d, repeats, min_sample_s):
  """Times one case in one mode; returns result rows (one per peer)."""
  if case == "gae":
    if mode != "logp":
      return []
    fns = {"pgx_lab": jax.jit(pgx_gae), "rlax": jax.jit(rlax_gae)}
    outs, times, first, inner = time_round_robin(fns, (d,), repeats, min_sample_s)
    np.testing.assert_allclose(outs["rlax"], outs["pgx_lab"], rtol=1e-4, atol=1e-4,
                               err_msg="gae: rlax differs from pgx_lab")
    return [_row(case, "forward", "rlax", d, times, first, inner)]

  pgx_loss = PGX[case]
  fns = {"pgx_lab": grad_step(loss_only(pgx_loss), mode, pgx=True)}
  if mode == "logp":  # In params mode the metrics' cost is far below the step's noise.
    fns["pgx_lab+metrics"] = grad_step(pgx_loss, mode, has_aux=True, pgx=True)
  peers = [(n, f, logits) for n, f, logits in GRAD_CASES[case] if mode == "params" or not logits]
  for name, loss, logits in peers:
    fns[name] = grad_step(loss, mode, takes_logits=logits)
  outs, times, first, inner = time_round_robin(fns, (x, d), repeats, min_sample_s)
  ref = outs["pgx_lab"]
  if "pgx_lab+metrics" in outs:
    (value_m, _), grad_m = outs["pgx_lab+metrics"]
    _check_same(case, mode, "pgx_lab+metrics", ref, (value_m, grad_m))
  rows = []
  for name, _, _ in peers:
    _check_same(case, mode, name, ref, outs[name])
    rows.append(_row(case, mode, name, d, times, first, inner))
  return rows


def _paired_ratio(num, den):
  """Median over rounds of num[i] / den[i]: robust to drift of the machine between rounds."""
  return statistics.median(a / b for a, b in zip(num, den))


def _row(case, mode, peer, d, times, first, inner):
  b, t = d["mask"].shape
  names = [n for n in ("pgx_lab", "pgx_lab+metrics", peer) if n in times]
  med = {n: statistics.median(times[n]) for n in names}
  row = {
      "case": case, "mode": mode, "B": b, "T": t, "peer": peer,
      "pgx_lab_ms": 1e3 * med["pgx_lab"],
      "peer_ms": 1e3 * med[peer],
      "ratio": _paired_ratio(times["pgx_lab"], times[peer]),
      "ratio_of_medians": med["pgx_lab"] / med[peer],
      "times_s": {n: times[n] for n in names},
      "calls_per_sample": {n: inner[n] for n in names},
      "first_call_s": {n: first[n] for n in names},
  }
  if "pgx_lab+metrics" in times:
    row["pgx_lab_metrics_ms"] = 1e3 * med["pgx_lab+metrics"]
    row["ratio_metrics"] = _paired_ratio(times["pgx_lab+metrics"], times[peer])
  return row


# ----------------------------------------------------------------------------------------------
# Report.


def markdown_table(rows):
  lines = [
      "| case | B x T | mode | peer | pgx_lab ms | peer ms | pgx_lab / peer "
      "| pgx_lab+metrics ms | (+metrics) / peer |",
      "|---|---|---|---|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    m_ms = f"{r['pgx_lab_metrics_ms']:.3f}" if "pgx_lab_metrics_ms" in r else "-"
    m_ratio = f"{r['ratio_metrics']:.2f}" if "ratio_metrics" in r else "-"
    lines.append(f"| {r['case']} | {r['B']} x {r['T']} | {r['mode']} | {r['peer']} "
                 f"| {r['pgx_lab_ms']:.3f} | {r['peer_ms']:.3f} | {r['ratio']:.2f} "
                 f"| {m_ms} | {m_ratio} |")
  return "\n".join(lines)


def machine():
  def _version(mod):
    return getattr(mod, "__version__", "?")
  cpu = common.cpu_model()
  return {
      "nproc": os.cpu_count(),
      "sched_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
      "cpu": cpu,
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jaxlib": importlib.metadata.version("jaxlib"),
      "rlax": _version(rlax),
      "backend": jax.default_backend(),
      "devices": [str(dev) for dev in jax.devices()],
  }


def _ints(text):
  return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  p.add_argument("--batch", default="16,256",
                 help="comma list of B (sequences), paired with --tokens (multiples of 8)")
  p.add_argument("--tokens", default="64,512", help="comma list of T (tokens), paired with --batch")
  p.add_argument("--repeats", type=int, default=15, help="timed calls per function (median)")
  p.add_argument("--modes", default="logp,params", help="comma list of logp, params")
  p.add_argument("--cases", default=",".join(CASES), help=f"comma list of {CASES}")
  p.add_argument("--min-sample-ms", type=float, default=20.0,
                 help="a timing sample repeats a fast step until it lasts about this long")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="results/bench/estimators.json", help="JSON output path")
  args = p.parse_args(argv)
  args.sizes = list(zip(_ints(args.batch), _ints(args.tokens)))
  if len(_ints(args.batch)) != len(_ints(args.tokens)):
    p.error("--batch and --tokens must list the same number of sizes")
  args.modes = [m for m in args.modes.split(",") if m]
  args.cases = [c for c in args.cases.split(",") if c]
  for m in args.modes:
    if m not in ("logp", "params"):
      p.error(f"unknown mode {m!r}")
  for c in args.cases:
    if c not in CASES:
      p.error(f"unknown case {c!r}")
  if args.repeats < 1:
    p.error("--repeats must be >= 1")
  return args


def main(argv=None):
  args = parse_args(argv)
  start = time.perf_counter()
  load_before = os.getloadavg()
  rows = []
  for b, t in args.sizes:
    w, logp0, d = make_data(b, t, args.seed)
    for case in args.cases:
      for mode in args.modes:
        x = logp0 if mode == "logp" else w
        new = run_case(case, mode, x, d, args.repeats, 1e-3 * args.min_sample_ms)
        for r in new:
          print(f"  {case:9s} {b:4d}x{t:<4d} {r['mode']:7s} vs {r['peer']:6s} "
                f"pgx_lab {r['pgx_lab_ms']:8.3f} ms  peer {r['peer_ms']:8.3f} ms  "
                f"ratio {r['ratio']:.2f}", flush=True)
        rows.extend(new)
  elapsed = time.perf_counter() - start
  load_after = os.getloadavg()
  table = markdown_table(rows)
  common.print_table(table, elapsed, load_before, load_after)
  result = {
      "command": " ".join(["python -m benchmarks.estimators"] + (sys.argv[1:] if argv is None
                                                                 else list(argv))),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "machine": machine(),
      "settings": {"sizes": args.sizes, "repeats": args.repeats, "modes": args.modes,
                   "vocab": VOCAB, "states": STATES, "group": GROUP, "seed": args.seed,
                   "min_sample_ms": args.min_sample_ms},
      "wall_s": elapsed,
      "loadavg_before": load_before,
      "loadavg_after": load_after,
      "rows": rows,
      "markdown": table,
  }
  if args.out:
    common.write_json(args.out, result)
  return result


if __name__ == "__main__":
  main()
