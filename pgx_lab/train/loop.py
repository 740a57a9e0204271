"""The host training loop shared by every kind of run: chunks, evaluation, metrics, checkpoints.

    result = train(config, workdir)          # config.kind picks the program:
    #   "env"     -> loop_env.train_env       (PPO on a gymnax env, vmapped over seeds)
    #   "tokens"  -> loop_tokens.train_tokens (GRPO / GSPO / Dr.GRPO on a token task)
    #   "tabular" -> loop_tabular.train_tabular (REINFORCE on a Garnet MDP, exact J)

A `Program` is the pure part of a run: `init()` builds the first `TrainState` (possibly batched
over seeds), `chunk(state) -> (state, metrics)` runs `config.chunk_size` updates as one jitted
`lax.scan`, and `evaluate(state) -> metrics` measures the policy. `run_program` is the host part:
it restores the latest checkpoint of `workdir/checkpoints` (or calls `init` and saves step 0),
runs chunks until `config.num_updates`, and after each chunk evaluates, appends to
`workdir/metrics.jsonl` (and TensorBoard under `workdir/tb/`), checkpoints every
`config.save_every` updates and updates a tqdm bar; at the end it saves the final state and writes
`workdir/report.md` and `workdir/curve.png`.

Resume. All randomness comes from the key inside the TrainState, which is checkpointed with the
params, and checkpoints fall only between chunks, so a run restarted from a checkpoint calls the
same compiled chunk on the same state as an uninterrupted run would: the final params are
bit-identical (on one CPU backend). The checkpoint directory carries a fingerprint of the config
(everything but `RUN_LENGTH_FIELDS`, see `fingerprint`); a workdir written by a different config
is refused by the Checkpointer with `IncompatibleWorkdirError` naming the differing fields. Lines
of metrics.jsonl written after the restored checkpoint (by the killed run) are dropped before
training goes on (TensorBoard events of those steps are not: TensorBoard shows both).

The configs are validated by `experiments.configs.validate` (the binary does it); these functions
assume a valid config.
"""

import collections
import json
import os
import time
from typing import Any, Callable, Dict, List, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pgx_lab.train.checkpoint import Checkpointer
from pgx_lab.train.metrics import MetricsWriter

# Config fields that may change between a run and its resumption.
RUN_LENGTH_FIELDS = ("num_updates", "save_every", "keep", "progress", "tensorboard")


class Program(NamedTuple):
  """The pure part of a training run.

  Attributes:
    init: `init() -> TrainState`, the state before the first update (may pretrain on the host).
    abstract: `abstract() -> pytree of jax.ShapeDtypeStruct`, the state's structure, for restore.
    chunk: `chunk(state) -> (state, metrics)`, `config.chunk_size` updates (jitted); metrics a
      dict of arrays ([] or [num_seeds]) averaged over the chunk's updates.
    evaluate: `evaluate(state) -> metrics`, a dict of arrays ([] or [num_seeds]).
    headline: the metric the progress bar, report and curve show (e.g. "eval_return").
    describe: a markdown paragraph for the report (what is trained on what).
  """

  init: Callable[[], Any]
  abstract: Callable[[], Any]
  chunk: Callable[[Any], Any]
  evaluate: Callable[[Any], Dict[str, Any]]
  headline: str
  describe: str


class TrainResult(NamedTuple):
  """What `train` returns: the final state, the metrics history (one dict per logged step, as in
  metrics.jsonl) and the report's path."""

  state: Any
  history: List[Dict[str, float]]
  report: str


def fingerprint(config) -> Dict[str, Any]:
  """The JSON-able part of `config` that must match to resume from a workdir: all fields but
  `RUN_LENGTH_FIELDS`, except that `num_updates` stays when `config.anneal_lr` is set (the
  learning-rate schedule then depends on the run's length, so a longer run is a different one)."""
  free = set(RUN_LENGTH_FIELDS)
  if config.get("anneal_lr", False):
    free.discard("num_updates")
  return {k: v for k, v in sorted(config.to_dict().items()) if k not in free}


def make_optimizer(learning_rate: Any, max_grad_norm: float) -> optax.GradientTransformation:
  """Adam (Kingma & Ba 2015) with global-norm clipping when `max_grad_norm > 0`.

  Args:
    learning_rate: a float or an optax schedule.
    max_grad_norm: clip threshold; 0 means no clipping.
  """
  adam = optax.adam(learning_rate, eps=1e-5)
  if max_grad_norm > 0:
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), adam)
  return adam


def summarize(metrics: Dict[str, Any]) -> Dict[str, float]:
  """Host floats from device metrics: the mean over seeds, plus `<name>_std` over seeds for
  per-seed ([num_seeds]) metrics with more than one seed."""
  out = {}
  for name, value in metrics.items():
    v = np.asarray(value, np.float64)
    out[name] = float(np.mean(v))
    if v.ndim == 1 and v.shape[0] > 1:
      out[f"{name}_std"] = float(np.std(v))
  return out


def _trim_metrics(path: str, last_step: int) -> None:
  """Drops lines of metrics.jsonl logged after `last_step` (by a run killed after its last
  checkpoint), so the resumed run's lines are not duplicated."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  keep = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= last_step:
        keep.append(line)
    except (ValueError, KeyError):  # a line cut by the kill
      continue
  with open(path, "w") as f:
    f.writelines(keep)


def _read_history(path: str) -> List[Dict[str, float]]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def run_program(config, workdir: str, program: Program) -> TrainResult:
  """Runs (or resumes) `program` in `workdir` until `config.num_updates` updates.

  Args:
    config: a validated training config (see `experiments.configs.validate`).
    workdir: the run's directory (created); holds checkpoints/, metrics.jsonl, tb/, report.md.
    program: the run's `Program`.

  Returns:
    `TrainResult(state, history, report_path)`.

  Raises:
    IncompatibleWorkdirError (a ValueError): `workdir` holds checkpoints of a different config.
  """
  os.makedirs(workdir, exist_ok=True)
  start = time.perf_counter()
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep,
                      save_every=config.save_every, fingerprint=fingerprint(config))
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  state, done = ckpt.restore_latest(program.abstract())
  resumed = state is not None
  if resumed:
    _trim_metrics(metrics_path, done)
  else:
    done = 0
    if os.path.exists(metrics_path):
      os.remove(metrics_path)
    state = program.init()
  # A restored state is committed to a device, a fresh one may not be: jit caches the two apart,
  # so commit both alike (one compilation, the same executable for fresh and resumed runs).
  state = jax.device_put(state, jax.devices()[0])
  writer = MetricsWriter(workdir, tensorboard=config.tensorboard)
  bar = None
  if config.progress:
    import tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm.tqdm(total=config.num_updates, initial=min(done, config.num_updates),
                    desc=f"train {config.kind}", unit="update", mininterval=0.5)
  try:
    if not resumed:
      writer.write(0, summarize(program.evaluate(state)))
      ckpt.save(0, state, force=True)
    while done < config.num_updates:
      state, chunk_metrics = program.chunk(state)
      done += config.chunk_size
      logged = summarize({**chunk_metrics, **program.evaluate(state)})
      writer.write(done, logged)
      ckpt.save(done, state)
      if bar is not None:
        bar.update(config.chunk_size)
        bar.set_postfix({program.headline: f"{logged.get(program.headline, float('nan')):.3f}",
                         "loss": f"{logged.get('loss', float('nan')):.3g}"})
    ckpt.wait()
    if ckpt.latest_step() != done:
      ckpt.save(done, state, force=True)
      ckpt.wait()
  finally:
    if bar is not None:
      bar.close()
    writer.close()
    ckpt.close()
  history = _read_history(metrics_path)
  report = write_report(config, workdir, program, history, time.perf_counter() - start, resumed)
  return TrainResult(state, history, report)


def write_report(config, workdir: str, program: Program, history: List[Dict[str, float]],
                 seconds: float, resumed: bool) -> str:
  """Writes `workdir/report.md` (set-up, headline curve, final metrics, config) and
  `workdir/curve.png`; returns the report's path.

  Args:
    config: the run's config.
    workdir: the run's directory.
    program: the run's `Program` (its `headline` and `describe`).
    history: metrics.jsonl's entries, one dict per logged step.
    seconds: wall time of this process's part of the run.
    resumed: whether this process resumed from a checkpoint.
  """
  head = program.headline
  lines = [f"# Training run: {config.kind}", "", program.describe, "",
           f"{config.num_updates} updates; this process ran {seconds:.1f} s"
           + (" (resumed from a checkpoint)." if resumed else "."), ""]
  curve = [(h["step"], h[head], h.get(f"{head}_std")) for h in history if head in h]
  if curve:
    lines += [f"## {head}", "", "| update | " + head + " | std over seeds |", "|---|---|---|"]
    for step, v, sd in curve:
      lines.append(f"| {step} | {v:.4f} | {'' if sd is None else f'{sd:.4f}'} |")
    lines += ["", "![curve](curve.png)", ""]
    _plot(os.path.join(workdir, "curve.png"), curve, head)
  if history:
    lines += ["## Final metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.6g} |" for k, v in sorted(history[-1].items()) if k != "step"]
    lines.append("")
  lines += ["## Config", "", "```", json.dumps(config.to_dict(), indent=1, sort_keys=True),
            "```", ""]
  path = os.path.join(workdir, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path


def _plot(path: str, curve, head: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  steps = np.array([c[0] for c in curve])
  mean = np.array([c[1] for c in curve])
  fig, ax = plt.subplots(figsize=(5, 3.2))
  ax.plot(steps, mean)
  if all(c[2] is not None for c in curve):
    sd = np.array([c[2] for c in curve])
    ax.fill_between(steps, mean - sd, mean + sd, alpha=0.25)
  ax.set_xlabel("update")
  ax.set_ylabel(head)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


_PROGRAMS: "collections.OrderedDict[str, Program]" = collections.OrderedDict()
_MAX_PROGRAMS = 8


def cached_program(config, make: Callable[[Any], Program]) -> Program:
  """`make(config)`, reused for a later config with the same fingerprint and `progress`, so that
  a notebook (or test) training the same run again does not trace and compile it again.

  Args:
    config: a validated config.
    make: the kind's `make_program(config) -> Program`.
  """
  key = json.dumps([make.__module__, fingerprint(config), config.progress], sort_keys=True)
  if key in _PROGRAMS:
    _PROGRAMS.move_to_end(key)
    return _PROGRAMS[key]
  program = make(config)
  _PROGRAMS[key] = program
  while len(_PROGRAMS) > _MAX_PROGRAMS:
    _PROGRAMS.popitem(last=False)
  return program


def split_key(state) -> Any:
  """(state with a fresh key, a key for this update's sampling), both from `state.key`."""
  key, sub = jax.random.split(state.key)
  return state.replace(key=key), sub


def seed_keys(seed: int, num_seeds: int) -> jax.Array:
  """[num_seeds] raw uint32 PRNG keys of a run: `split(PRNGKey(seed), num_seeds)`."""
  return jax.random.split(jax.random.PRNGKey(seed), num_seeds)


def mean_over_chunk(metrics: Dict[str, jax.Array]) -> Dict[str, jax.Array]:
  """Averages a scan's stacked per-update metrics ([chunk_size, ...]) over its first axis."""
  return jax.tree.map(lambda v: jnp.mean(v, axis=0), metrics)


def train(config, workdir: str) -> TrainResult:
  """Trains (or resumes) the run `config.kind` names in `workdir`; see the module docstring."""
  if config.kind == "env":
    from pgx_lab.train.loop_env import train_env  # pylint: disable=import-outside-toplevel
    return train_env(config, workdir)
  if config.kind == "tokens":
    from pgx_lab.train.loop_tokens import train_tokens  # pylint: disable=import-outside-toplevel
    return train_tokens(config, workdir)
  if config.kind == "tabular":
    from pgx_lab.train.loop_tabular import train_tabular  # pylint: disable=import-outside-toplevel
    return train_tabular(config, workdir)
  raise ValueError(f"`config.kind` must be 'env', 'tokens' or 'tabular', got {config.kind!r}.")


def __getattr__(name: str):
  """`loop.train_env`, `loop.train_tokens`, `loop.train_tabular` (imported on first use)."""
  if name in ("train_env", "train_tokens", "train_tabular"):
    import importlib  # pylint: disable=import-outside-toplevel
    return getattr(importlib.import_module(f"pgx_lab.train.loop_{name[6:]}"), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
