"""Rollout throughput: pgx_lab's `rollout` against gymnax's own step loop, in env steps per second.

    python -m benchmarks.rollout [--num-envs=4096] [--num-steps=500] [--repeats=7] \
        [--sections=cartpole,sampling] [--out=results/bench/rollout.json]

Section `cartpole` (CartPole-v1, `--num-envs` environments, `--num-steps` steps each):
  pgx_lab   `pgx_lab.rollout.rollout` on `GymnaxEnv("CartPole-v1")`: vmap over environments of a
            `lax.scan` over steps, writing the Trajectory (obs, actions, rewards, logp,
            terminated, truncated, mask). `auto_reset=True` (a continuing stream, the same work as
            gymnax's auto-resetting step) and, as a second row, `auto_reset=False` (one episode
            per row, padding after the end).
  gymnax    the loop of gymnax's README, written in plain JAX: `jax.jit` of a `lax.scan` over
            `jax.vmap(env.step)` (gymnax's auto-resetting step), one key per environment per step,
            stacking obs, action, reward, logp, terminated, truncated (time-major [T, B]).
  gymnax->BT  the same loop with its outputs transposed to batch-major [B, T] (the layout of
            pgx_lab's Trajectory and of the estimators' batches): same work as pgx_lab's.
Both draw their actions with the same policy, one key per environment and step:
  random    a uniform random action (`jax.random.randint`) with its log-probability: the rows
            compare environment stepping.
  mlp       a (64, 64) tanh `mlp.CategoricalPolicy` sampled per environment: a realistic policy
            cost, reported separately.

Each function is jitted, compiled, called twice to warm up, then timed round-robin: each of
`--repeats` rounds times one call of every function, ended by `block_until_ready`, in wall time
and in process CPU time (`time.process_time`, all threads: less sensitive to other processes on a
shared machine). Reported: the median wall time per rollout, env steps per second =
num_envs * num_steps / median, and ratios of pgx_lab's steps/s to gymnax's (> 1: pgx_lab faster),
each the median over rounds of the per-round ratio (so load drift between rounds cancels), in wall
and in CPU time. Before timing, both rollouts' mean episode length with
random actions is checked to agree (both simulate the same CartPole; their keys differ).

Section `sampling`: tokens per second of KV-cached against uncached sampling from the
transformer LM (see `benchmarks/token_sampling.py`; batch 64, prompt 16, 32 and 128 new tokens,
a small and a medium model).
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

import gymnax
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from benchmarks import token_sampling
from pgx_lab.envs.gymnax_adapter import GymnaxEnv
from pgx_lab.models import mlp
from pgx_lab.rollout import model_policy_fn
from pgx_lab.rollout import rollout

ENV_ID = "CartPole-v1"
HIDDEN = (64, 64)


# ----------------------------------------------------------------------------------------------
# Policies: `policy(params, key, obs) -> (action, logp)` for one observation.


def random_policy(params, key, obs):
  """A uniform action of CartPole's two, with its log-probability."""
  del params, obs
  return jax.random.randint(key, (), 0, 2, jnp.int32), jnp.float32(-math.log(2.0))


def make_policies():
  """{"random": (policy, params), "mlp": (policy, params)}."""
  model = mlp.CategoricalPolicy(2, hidden_sizes=HIDDEN)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros(4))
  return {"random": (random_policy, None), "mlp": (model_policy_fn(model), params)}


# ----------------------------------------------------------------------------------------------
# The two rollouts: `f(key) -> outputs`, jitted.


def pgx_rollout_fn(policy, params, num_envs, num_steps, auto_reset):
  env = GymnaxEnv(ENV_ID)
  env_params = env.default_params()
  return jax.jit(lambda key: rollout(key, env, env_params, policy, params, num_envs, num_steps,
                                     auto_reset=auto_reset))


def gymnax_rollout_fn(policy, params, num_envs, num_steps):
  """gymnax's README loop: scan over `vmap(env.step)` with per-environment keys."""
  env, env_params = gymnax.make(ENV_ID)
  v_reset = jax.vmap(env.reset, in_axes=(0, None))
  v_step = jax.vmap(env.step, in_axes=(0, 0, 0, None))
  v_policy = jax.vmap(policy, in_axes=(None, 0, 0))

  def run(key, batch_major=False):
    k_reset, k_run = jax.random.split(key)
    obs, state = v_reset(jax.random.split(k_reset, num_envs), env_params)

    def body(carry, step_key):
      obs, state = carry
      k_act, k_step = jax.random.split(step_key)
      action, logp = v_policy(params, jax.random.split(k_act, num_envs), obs)
      next_obs, next_state, reward, terminated, truncated, _ = v_step(
          jax.random.split(k_step, num_envs), state, action, env_params)
      return (next_obs, next_state), (obs, action, reward, logp, terminated, truncated)

    _, out = jax.lax.scan(body, (obs, state), jax.random.split(k_run, num_steps))
    if batch_major:
      out = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), out)
    return out

  return jax.jit(run, static_argnums=1)


def mean_episode_length(terminated, truncated):
  """Steps per finished episode (terminated or truncated) in a stream of auto-reset steps."""
  ends = int(np.sum(np.asarray(terminated) | np.asarray(truncated)))
  return np.asarray(terminated).size / max(ends, 1)


# ----------------------------------------------------------------------------------------------
# Timing.


def _block(tree):
  return jax.tree.map(lambda a: a.block_until_ready(), tree)


def time_round_robin(fns, key, repeats, warmup=2):
  """Compiles and warms up each of `fns` (name -> jitted `f(key)`), then times them round-robin.

  Returns ({name: first output}, {name: [wall seconds per call, one per round]},
  {name: [CPU seconds per call]}, {name: seconds of the first call, compilation included}).
  """
  outs, first = {}, {}
  for name, fn in fns.items():
    t0 = time.perf_counter()
    outs[name] = _block(fn(key))
    first[name] = time.perf_counter() - t0
    for _ in range(warmup):
      _block(fn(key))
  times = {name: [] for name in fns}
  cpu = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      c0, t0 = time.process_time(), time.perf_counter()
      _block(fn(key))
      times[name].append(time.perf_counter() - t0)
      cpu[name].append(time.process_time() - c0)
  return outs, times, cpu, first


def _paired(num, den):
  """Median over rounds of den[i] / num[i]: the steps/s ratio num-side / den-side."""
  return statistics.median(d / n for n, d in zip(num, den))


def cartpole_rows(args):
  """The `cartpole` section: one row per (policy, pgx_lab mode), each against gymnax's loop.

  Args:
    args: parsed arguments with `num_envs`, `num_steps`, `repeats`, `seed`.

  Returns:
    A list of dicts: policy, pgx_lab mode, sizes, medians, steps/s, the paired ratio of steps/s
    (pgx_lab / gymnax; > 1 means pgx_lab is faster), raw times and compile times.
  """
  b, t = args.num_envs, args.num_steps
  key = jax.random.PRNGKey(args.seed)
  rows = []
  for pname, (policy, params) in make_policies().items():
    gym = gymnax_rollout_fn(policy, params, b, t)
    fns = {
        "pgx_lab auto_reset": pgx_rollout_fn(policy, params, b, t, True),
        "pgx_lab episodes": pgx_rollout_fn(policy, params, b, t, False),
        "gymnax": gym,
        "gymnax->BT": lambda k, gym=gym: gym(k, True),
    }
    outs, times, cpu, first = time_round_robin(fns, key, args.repeats)
    traj, g = outs["pgx_lab auto_reset"], outs["gymnax"]
    lengths = {"pgx_lab auto_reset": mean_episode_length(traj.terminated, traj.truncated),
               "gymnax": mean_episode_length(g[4], g[5])}
    if pname == "random":  # Same dynamics, different keys: the mean lengths agree closely.
      rel = abs(lengths["pgx_lab auto_reset"] / lengths["gymnax"] - 1.0)
      if rel > 0.05:
        raise AssertionError(f"mean episode lengths differ by {rel:.1%}: {lengths}")
    for mode in ("auto_reset", "episodes"):
      name = f"pgx_lab {mode}"
      names = (name, "gymnax", "gymnax->BT")
      med = {n: statistics.median(times[n]) for n in names}
      rows.append({
          "section": "cartpole", "policy": pname, "pgx_lab_mode": mode,
          "num_envs": b, "num_steps": t,
          "pgx_lab_ms": 1e3 * med[name], "gymnax_ms": 1e3 * med["gymnax"],
          "gymnax_bt_ms": 1e3 * med["gymnax->BT"],
          "pgx_lab_steps_per_s": b * t / med[name], "gymnax_steps_per_s": b * t / med["gymnax"],
          "ratio_steps_per_s": _paired(times[name], times["gymnax"]),
          "ratio_steps_per_s_cpu": _paired(cpu[name], cpu["gymnax"]),
          "ratio_vs_gymnax_bt": _paired(times[name], times["gymnax->BT"]),
          "ratio_vs_gymnax_bt_cpu": _paired(cpu[name], cpu["gymnax->BT"]),
          "cpu_ms": {n: 1e3 * statistics.median(cpu[n]) for n in names},
          "mean_episode_length": lengths,
          "times_s": {n: times[n] for n in names},
          "cpu_s": {n: cpu[n] for n in names},
          "first_call_s": {n: first[n] for n in names},
      })
      r = rows[-1]
      print(f"  {pname:6s} {mode:10s} pgx_lab {r['pgx_lab_steps_per_s'] / 1e6:6.2f} M/s  "
            f"gymnax {r['gymnax_steps_per_s'] / 1e6:6.2f} M/s  ratio {r['ratio_steps_per_s']:.2f} "
            f"(cpu {r['ratio_steps_per_s_cpu']:.2f}); vs gymnax->BT {r['ratio_vs_gymnax_bt']:.2f} "
            f"(cpu {r['ratio_vs_gymnax_bt_cpu']:.2f})", flush=True)
  return rows


def sampling_rows(args):
  """The `sampling` section: tokens per second of KV-cached against uncached sampling from the
  transformer LM (`benchmarks.token_sampling.rows` at its defaults)."""
  return [dict(r, section="sampling") for r in token_sampling.rows()]


SECTIONS = {"cartpole": cartpole_rows, "sampling": sampling_rows}


# ----------------------------------------------------------------------------------------------
# Report.


def markdown_table(rows):
  lines = [
      "| env | policy | pgx_lab mode | envs x steps | pgx_lab ms | gymnax ms | gymnax->BT ms "
      "| pgx_lab M steps/s | gymnax M steps/s | pgx_lab / gymnax wall (cpu) "
      "| pgx_lab / gymnax->BT wall (cpu) |",
      "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    lines.append(f"| {ENV_ID} | {r['policy']} | {r['pgx_lab_mode']} "
                 f"| {r['num_envs']} x {r['num_steps']} | {r['pgx_lab_ms']:.1f} "
                 f"| {r['gymnax_ms']:.1f} | {r['gymnax_bt_ms']:.1f} "
                 f"| {r['pgx_lab_steps_per_s'] / 1e6:.2f} | {r['gymnax_steps_per_s'] / 1e6:.2f} "
                 f"| {r['ratio_steps_per_s']:.2f} ({r['ratio_steps_per_s_cpu']:.2f}) "
                 f"| {r['ratio_vs_gymnax_bt']:.2f} ({r['ratio_vs_gymnax_bt_cpu']:.2f}) |")
  return "\n".join(lines)


def machine():
  cpu = common.cpu_model()
  return {
      "nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
      "jax": jax.__version__, "jaxlib": importlib.metadata.version("jaxlib"),
      "gymnax": importlib.metadata.version("gymnax"), "flax": importlib.metadata.version("flax"),
      "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
  }


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  p.add_argument("--num-envs", type=int, default=4096, help="environments stepped in parallel")
  p.add_argument("--num-steps", type=int, default=500, help="steps per environment")
  p.add_argument("--repeats", type=int, default=7, help="timed rounds (median)")
  p.add_argument("--sections", default="cartpole,sampling",
                 help=f"comma list of {tuple(SECTIONS)}")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="results/bench/rollout.json", help="JSON output path")
  args = p.parse_args(argv)
  args.sections = [s for s in args.sections.split(",") if s]
  for s in args.sections:
    if s not in SECTIONS:
      p.error(f"unknown section {s!r}; expected one of {tuple(SECTIONS)}")
  for name in ("num_envs", "num_steps", "repeats"):
    if getattr(args, name) < 1:
      p.error(f"--{name.replace('_', '-')} must be >= 1")
  return args


def main(argv=None):
  args = parse_args(argv)
  start = time.perf_counter()
  load_before = os.getloadavg()
  rows = []
  for section in args.sections:
    rows.extend(SECTIONS[section](args))
  elapsed = time.perf_counter() - start
  load_after = os.getloadavg()
  tables = []
  cart = [r for r in rows if r["section"] == "cartpole"]
  samp = [r for r in rows if r["section"] == "sampling"]
  if cart:
    tables.append(markdown_table(cart))
  if samp:
    tables.append(token_sampling.markdown(samp))
  table = "\n\n".join(tables)
  common.print_table(table, elapsed, load_before, load_after)
  result = {
      "command": " ".join(["python -m benchmarks.rollout"]
                          + (sys.argv[1:] if argv is None else list(argv))),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "machine": machine(),
      "settings": {"num_envs": args.num_envs, "num_steps": args.num_steps,
                   "repeats": args.repeats, "sections": args.sections, "seed": args.seed,
                   "env": ENV_ID, "mlp_hidden": HIDDEN},
      "wall_s": elapsed, "loadavg_before": load_before, "loadavg_after": load_after,
      "rows": rows, "markdown": table,
  }
  if args.out:
    common.write_json(args.out, result)
  return result


if __name__ == "__main__":
  main()
