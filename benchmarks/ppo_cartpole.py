"""PPO on gymnax CartPole-v1 end to end: pgx_lab against PureJaxRL's own `ppo.py`, same run.

    git clone https://github.com/luchris429/purejaxrl /tmp/purejaxrl
    python -m benchmarks.ppo_cartpole --purejaxrl=/tmp/purejaxrl/purejaxrl \
        [--seeds=1,4] [--repeats=3] [--out=results/bench/ppo_cartpole.json]

Both sides train PPO with PureJaxRL's default CartPole hyperparameters (4 envs x 128 steps per
update, 976 updates = 499,712 env steps per seed, 4 epochs of 4 minibatches, Adam 2.5e-4
annealed, GAE 0.99/0.95, clip 0.2, entropy 0.01, value 0.5, grad-norm 0.5, (64, 64) tanh
actor and critic), `--seeds` seeds vmapped in one jitted program:
  purejaxrl        `jax.jit(jax.vmap(make_train(config)))(keys)` from PureJaxRL's `ppo.py`, read
                   from `--purejaxrl` (a folder holding its `ppo.py` and `wrappers.py`, or the
                   `PUREJAXRL_DIR` environment variable). Its code is imported as it is, never
                   copied here. Two shims let it run on this stack, both outside its files:
                   gymnax 1.x's `step` returns (obs, state, reward, terminated, truncated, info),
                   so the env its `make_train` builds is wrapped to return PureJaxRL's five
                   values with done = terminated or truncated (the same auto-reset step);
                   `wrappers.py` imports brax and navix at the top for other wrappers, so empty
                   stand-in modules are registered for those two names when they are not
                   installed (the CartPole path never touches them).
  pgx_lab core     `pgx_lab.train.loop_env.make_program(config).chunk` with one chunk holding all
                   976 updates: the same jitted, vmapped training program that
                   `python -m experiments.train --config=experiments/configs/ppo_cartpole.py` runs.
  pgx_lab train    `pgx_lab.train.loop_env.train_env(config, workdir)` into a fresh workdir: the
                   whole binary's work, i.e. the core program in 16 chunks of 61 updates with an
                   evaluation (16 episodes) after each chunk, metrics to JSONL and TensorBoard,
                   and an orbax checkpoint every 244 updates (progress bar off).
Each function is compiled and run once to warm up; then `--repeats` rounds each time one full
training run of every function (ended by `block_until_ready`). Reported: env steps per second
(seeds x 499,712 / median time) and the ratios pgx_lab / PureJaxRL of steps per second, each the
median over rounds of the per-round ratio (load that drifts between rounds cancels), in wall and
in process CPU time. Before timing, the final mean episode return of both is printed (both solve
CartPole: a check that the two runs do the same job, not a timing).
"""

import argparse
import contextlib
import importlib
import io
import os
import statistics
import sys
import tempfile
import time
import types as pytypes

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common

PUREJAXRL_CONFIG = {
    "LR": 2.5e-4, "NUM_ENVS": 4, "NUM_STEPS": 128, "TOTAL_TIMESTEPS": 5e5, "UPDATE_EPOCHS": 4,
    "NUM_MINIBATCHES": 4, "GAMMA": 0.99, "GAE_LAMBDA": 0.95, "CLIP_EPS": 0.2, "ENT_COEF": 0.01,
    "VF_COEF": 0.5, "MAX_GRAD_NORM": 0.5, "ACTIVATION": "tanh", "ENV_NAME": "CartPole-v1",
    "ANNEAL_LR": True, "DEBUG": False,
}  # PureJaxRL ppo.py's __main__ config, with its debug printing off.


# ----------------------------------------------------------------------------------------------
# PureJaxRL, imported from its own folder.


class _FiveValueEnv:
  """A gymnax 1.x env whose `step` returns PureJaxRL's (obs, state, reward, done, info)."""

  def __init__(self, env):
    self._env = env

  def __getattr__(self, name):
    return getattr(self._env, name)

  def step(self, key, state, action, params=None):
    obs, state, reward, terminated, truncated, info = self._env.step(key, state, action, params)
    return obs, state, reward, jnp.logical_or(terminated, truncated), info


def load_purejaxrl(folder: str):
  """Imports PureJaxRL's `ppo` module from `folder` with the two shims of the module docstring."""
  if not folder or not os.path.exists(os.path.join(folder, "ppo.py")):
    raise SystemExit(
        f"--purejaxrl={folder!r} does not hold PureJaxRL's ppo.py. Clone it first:\n"
        "  git clone https://github.com/luchris429/purejaxrl /tmp/purejaxrl\n"
        "  python -m benchmarks.ppo_cartpole --purejaxrl=/tmp/purejaxrl/purejaxrl")
  for name in ("brax", "brax.envs", "brax.envs.wrappers", "brax.envs.wrappers.training", "navix"):
    try:
      importlib.import_module(name)
    except ImportError:
      stand_in = pytypes.ModuleType(name)
      stand_in.envs = stand_in
      stand_in.EpisodeWrapper = stand_in.AutoResetWrapper = None
      sys.modules[name] = stand_in
  sys.path.insert(0, os.path.abspath(folder))
  try:
    ppo = importlib.import_module("ppo")
  finally:
    sys.path.pop(0)
  import gymnax  # pylint: disable=import-outside-toplevel
  shim = pytypes.SimpleNamespace(
      make=lambda *a, **k: (lambda e, p: (_FiveValueEnv(e), p))(*gymnax.make(*a, **k)))
  ppo.gymnax = shim
  return ppo


def purejaxrl_fn(ppo, seeds: int):
  """(`run(key) -> out`, `final_return(out)`) for PureJaxRL's training over `seeds` seeds."""
  train = jax.jit(jax.vmap(ppo.make_train(dict(PUREJAXRL_CONFIG))))

  def run(key):
    return train(jax.random.split(key, seeds))

  def final_return(out):
    """Mean over seeds of the last finished episode's return at the last update."""
    return float(np.mean(np.asarray(out["metrics"]["returned_episode_returns"])[:, -1, -1]))

  return run, final_return


# ----------------------------------------------------------------------------------------------
# pgx_lab.


def pgx_config(seeds: int, one_chunk: bool):
  """experiments/configs/ppo_cartpole.py with `seeds` seeds (and one chunk of all updates)."""
  from experiments.configs import ppo_cartpole  # pylint: disable=import-outside-toplevel
  from experiments.configs import validate  # pylint: disable=import-outside-toplevel
  c = ppo_cartpole.get_config()
  c.num_seeds = seeds
  c.progress = False
  if one_chunk:
    c.chunk_size = c.num_updates
    c.save_every = c.num_updates
  validate.validate(c)
  return c


def pgx_core_fn(seeds: int):
  """(`run(key) -> state`, `final_return(state)`): the jitted program, one chunk of all updates."""
  from pgx_lab.train import loop_env  # pylint: disable=import-outside-toplevel
  program = loop_env.make_program(pgx_config(seeds, one_chunk=True))
  init = program.init()

  def run(key):
    del key  # The program's seeds come from its config.
    return program.chunk(init)[0]

  def final_return(state):
    """Mean over seeds of the evaluation return (16 sampled episodes) of the final params."""
    return float(np.mean(np.asarray(program.evaluate(state)["eval_return"])))

  return run, final_return


def pgx_train_fn(seeds: int, root: str):
  """(`run(key) -> TrainResult`, `final_return`): `train_env` into a fresh workdir each call."""
  from pgx_lab.train import loop_env  # pylint: disable=import-outside-toplevel
  config = pgx_config(seeds, one_chunk=False)
  calls = [0]

  def run(key):
    del key
    calls[0] += 1
    workdir = os.path.join(root, f"run{calls[0]}")
    with contextlib.redirect_stdout(io.StringIO()):
      return loop_env.train_env(config, workdir)

  def final_return(result):
    """The last logged evaluation return (mean over seeds)."""
    return float(result.history[-1]["eval_return"])

  return run, final_return


# ----------------------------------------------------------------------------------------------
# Timing.


def _block(tree):
  return jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a,
                      tree)


def time_rounds(fns, key, repeats):
  """Runs each of `fns` (name -> (run, final_return)) once (compile and warm up), then times
  `repeats` round-robin rounds of the runs.

  Returns ({name: headline return of the warm-up run}, {name: seconds of the first call},
  {name: [wall seconds]}, {name: [CPU seconds]}).
  """
  headline, first = {}, {}
  for name, (fn, final_return) in fns.items():
    t0 = time.perf_counter()
    out = _block(fn(key))
    first[name] = time.perf_counter() - t0
    headline[name] = final_return(out)
    print(f"  warm-up {name:13s} {first[name]:7.1f} s (compile included), final return "
          f"{headline[name]:.1f}", flush=True)
  wall = {name: [] for name in fns}
  cpu = {name: [] for name in fns}
  names = list(fns)
  for i in range(repeats):
    order = names if i % 2 == 0 else names[::-1]  # Alternate the order: no side always first.
    for name in order:
      c0, t0 = time.process_time(), time.perf_counter()
      _block(fns[name][0](key))
      wall[name].append(time.perf_counter() - t0)
      cpu[name].append(time.process_time() - c0)
  return headline, first, wall, cpu


def _ratio(ours, theirs):
  """Median over rounds of theirs / ours: our steps/s over theirs (> 1: pgx_lab faster)."""
  return statistics.median(t / o for o, t in zip(ours, theirs))


def rows_for(ppo, seeds: int, repeats: int, root: str):
  steps = seeds * 976 * 4 * 128
  fns = {"purejaxrl": purejaxrl_fn(ppo, seeds), "pgx_lab core": pgx_core_fn(seeds),
         "pgx_lab train": pgx_train_fn(seeds, os.path.join(root, f"seeds{seeds}"))}
  print(f"seeds={seeds}: {steps} env steps per training run", flush=True)
  headline, first, wall, cpu = time_rounds(fns, jax.random.PRNGKey(0), repeats)
  rows = []
  for name in ("pgx_lab core", "pgx_lab train"):
    rows.append({
        "seeds": seeds, "env_steps": steps, "pgx_lab": name,
        "pgx_lab_s": statistics.median(wall[name]), "purejaxrl_s": statistics.median(
            wall["purejaxrl"]),
        "pgx_lab_steps_per_s": steps / statistics.median(wall[name]),
        "purejaxrl_steps_per_s": steps / statistics.median(wall["purejaxrl"]),
        "ratio_steps_per_s": _ratio(wall[name], wall["purejaxrl"]),
        "ratio_steps_per_s_cpu": _ratio(cpu[name], cpu["purejaxrl"]),
        "first_call_s": {name: first[name], "purejaxrl": first["purejaxrl"]},
        "final_return": {name: headline[name], "purejaxrl": headline["purejaxrl"]},
        "wall_s": {name: wall[name], "purejaxrl": wall["purejaxrl"]},
        "cpu_s": {name: cpu[name], "purejaxrl": cpu["purejaxrl"]},
    })
    r = rows[-1]
    print(f"  {name:13s} {r['pgx_lab_steps_per_s'] / 1e3:7.1f} k steps/s  purejaxrl "
          f"{r['purejaxrl_steps_per_s'] / 1e3:7.1f} k steps/s  ratio {r['ratio_steps_per_s']:.3f}"
          f" (cpu {r['ratio_steps_per_s_cpu']:.3f})", flush=True)
  return rows


def markdown_table(rows):
  lines = ["| seeds | pgx_lab | pgx_lab s | PureJaxRL s | pgx_lab k steps/s | PureJaxRL k steps/s "
           "| pgx_lab / PureJaxRL wall (cpu) | compile+first run s (pgx_lab, PureJaxRL) "
           "| final return (pgx_lab, PureJaxRL) |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    first = r["first_call_s"]
    ret = r["final_return"]
    lines.append(
        f"| {r['seeds']} | {r['pgx_lab']} | {r['pgx_lab_s']:.2f} | {r['purejaxrl_s']:.2f} "
        f"| {r['pgx_lab_steps_per_s'] / 1e3:.1f} | {r['purejaxrl_steps_per_s'] / 1e3:.1f} "
        f"| {r['ratio_steps_per_s']:.3f} ({r['ratio_steps_per_s_cpu']:.3f}) "
        f"| {first[r['pgx_lab']]:.1f}, {first['purejaxrl']:.1f} "
        f"| {ret[r['pgx_lab']]:.1f}, {ret['purejaxrl']:.1f} |")
  return "\n".join(lines)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  p.add_argument("--purejaxrl", default=os.environ.get("PUREJAXRL_DIR", ""),
                 help="folder with PureJaxRL's ppo.py and wrappers.py (or $PUREJAXRL_DIR)")
  p.add_argument("--seeds", default="1,4", help="comma list of vmapped seed counts")
  p.add_argument("--repeats", type=int, default=3, help="timed rounds (median)")
  p.add_argument("--out", default="results/bench/ppo_cartpole.json", help="JSON output path")
  args = p.parse_args(argv)
  try:
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
  except ValueError:
    p.error(f"--seeds must be a comma list of integers, got {args.seeds!r}")
  if not args.seeds or min(args.seeds) < 1:
    p.error("--seeds must list counts >= 1")
  if args.repeats < 1:
    p.error("--repeats must be >= 1")
  return args


def main(argv=None):
  args = parse_args(argv)
  ppo = load_purejaxrl(args.purejaxrl)
  start, load_before = time.perf_counter(), os.getloadavg()
  rows = []
  with tempfile.TemporaryDirectory() as root:
    for seeds in args.seeds:
      rows.extend(rows_for(ppo, seeds, args.repeats, root))
  elapsed, load_after = time.perf_counter() - start, os.getloadavg()
  table = markdown_table(rows)
  common.print_table(table, elapsed, load_before, load_after)
  common.write_json(args.out, {
      "machine": {"nproc": os.cpu_count(), "cpu": common.cpu_model(), "jax": jax.__version__,
                  "backend": jax.default_backend()},
      "purejaxrl_config": PUREJAXRL_CONFIG, "repeats": args.repeats, "rows": rows,
      "wall_s": elapsed, "load_before": load_before, "load_after": load_after, "table": table})


if __name__ == "__main__":
  main()
