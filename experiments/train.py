r"""The training binary: one config file per run kind, every field overridable on the command line.

  python -m experiments.train --config=experiments/configs/grpo_tokens.py  # -> results/train/
  python -m experiments.train --config=experiments/configs/ppo_cartpole.py \
      --config.num_seeds=4 --config.learning_rate=3e-4 --workdir=/tmp/ppo

The config is validated (`experiments.configs.validate`) before anything compiles; then
`pgx_lab.train.loop.train` runs the loop its `kind` names. Starting again with the same workdir
continues from the latest checkpoint; a workdir written by a different config is refused.
The workdir gets checkpoints/, metrics.jsonl, tb/ (TensorBoard), report.md and curve.png.
"""

import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments.configs import validate as validate_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config file under "
                                          "experiments/configs/ (its get_config()).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory (created; resumed from "
                               "when it holds checkpoints). Default: results/train/<config name>.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first "
                                  "(several hosts; see BUILD.md).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 "
                                   "(with --distributed; None: auto-detect).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With --distributed.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "With --distributed.")
flags.mark_flags_as_required(["config"])


def default_workdir() -> str:
  """results/train/<the config file's name without .py>."""
  path = config_flags.get_config_filename(flags.FLAGS["config"])
  return os.path.join("results", "train", os.path.splitext(os.path.basename(path))[0])


def run(config, workdir: str):
  """Validates `config`, then trains (or resumes) it in `workdir`; returns loop's TrainResult."""
  validate_lib.validate(config)
  from pgx_lab.train import loop  # pylint: disable=import-outside-toplevel
  return loop.train(config, workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:   # orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  t0 = time.perf_counter()
  if _DISTRIBUTED.value:
    from pgx_lab import distributed  # pylint: disable=import-outside-toplevel
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  config = _CONFIG.value
  try:
    validate_lib.validate(config)
  except ValueError as e:   # an invalid config: the message, no traceback
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  from pgx_lab.train import checkpoint  # pylint: disable=import-outside-toplevel
  try:
    result = run(config, _WORKDIR.value or default_workdir())
  except checkpoint.IncompatibleWorkdirError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  last = result.history[-1] if result.history else {}
  print("final: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(last.items())))
  print(f"report: {result.report}  ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
  app.run(main)
