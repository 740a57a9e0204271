"""Reliability: a training run SIGKILLed at a random update after its first checkpoint, restarted
with the same workdir, ends with a state (params, optimizer state, PRNG key) and metrics
bit-identical to an uninterrupted run; a workdir of an incompatible config is refused."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from experiments.configs import reinforce_tabular
from pgx_lab.train import loop
from pgx_lab.train import loop_tabular
from pgx_lab.train.checkpoint import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = dict(num_updates=150, chunk_size=1, save_every=1, keep=2, num_seeds=2, num_states=6,
                 num_actions=3, branching=2, horizon=5, batch_size=8, learning_rate=0.2,
                 progress=False, tensorboard=False)


def command(workdir, **extra):
  flags = {**OVERRIDES, **extra}
  return [sys.executable, "-m", "experiments.train", f"--workdir={workdir}",
          "--config=experiments/configs/reinforce_tabular.py",
          *(f"--config.{k}={v}" for k, v in flags.items())]


def run(workdir, **extra):
  return subprocess.run(command(workdir, **extra), cwd=ROOT, capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)


def checkpoint_steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def final_state(workdir):
  config = reinforce_tabular.get_config()
  config.update(OVERRIDES)
  abstract = loop_tabular.make_program(config).abstract()
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), fingerprint=loop.fingerprint(config))
  state, step = ckpt.restore_latest(abstract)
  ckpt.close()
  return state, step


def history(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_sigkill_then_resume_is_bit_identical(tmp_path):
  killed_dir, clean_dir = str(tmp_path / "killed"), str(tmp_path / "clean")
  rng = random.Random()
  delay = rng.uniform(0.0, 1.5)
  proc = subprocess.Popen(command(killed_dir), cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  deadline = time.time() + 120
  while not any(s > 0 for s in checkpoint_steps(killed_dir)):   # wait for a checkpoint past 0
    assert proc.poll() is None, "the run ended before its first checkpoint"
    assert time.time() < deadline
    time.sleep(0.02)
  time.sleep(delay)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  at_kill = checkpoint_steps(killed_dir)
  print(f"killed {delay:.2f} s after the first checkpoint; checkpoints then: {at_kill}")
  assert max(at_kill) < OVERRIDES["num_updates"], "killed too late to test anything"

  resumed = run(killed_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  clean = run(clean_dir)
  assert clean.returncode == 0, clean.stderr[-3000:]

  (s_killed, n_killed), (s_clean, n_clean) = final_state(killed_dir), final_state(clean_dir)
  assert n_killed == n_clean == OVERRIDES["num_updates"]
  la, lb = jax.tree.leaves(s_killed), jax.tree.leaves(s_clean)
  assert len(la) == len(lb) and la
  for a, b in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # No duplicated or missing metrics lines around the kill, and the same numbers.
  assert history(killed_dir) == history(clean_dir)
  assert [h["step"] for h in history(clean_dir)] == list(range(OVERRIDES["num_updates"] + 1))


def test_incompatible_config_is_refused_without_touching_the_workdir(tmp_path):
  workdir = str(tmp_path / "run")
  first = run(workdir, num_updates=3)
  assert first.returncode == 0, first.stderr[-3000:]
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  other = run(workdir, num_updates=3, num_states=7, batch_size=16)
  assert other.returncode == 2
  assert "different run" in other.stderr
  assert "num_states" in other.stderr and "batch_size" in other.stderr
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
  longer = run(workdir, num_updates=5)       # a run-length field may change: it continues
  assert longer.returncode == 0, longer.stderr[-3000:]
  assert [h["step"] for h in history(workdir)] == [0, 1, 2, 3, 4, 5]
