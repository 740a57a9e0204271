"""`MetricsWriter`: scalar metrics to `workdir/metrics.jsonl` and TensorBoard event files.

One JSON object per line, `{"step": int, "<name>": float, ...}`, flushed at every write so that a
killed run loses nothing already written; TensorBoard scalars go through tensorboardX (no
TensorFlow) to `workdir/tb/`. Only process 0 writes (multi-host runs call it on every host).
Non-finite values are written as JSON `NaN`/`Infinity`, which Python's `json` reads back.
"""

import json
import numbers
import os
from typing import Any, Mapping

import jax
import numpy as np


def _as_float(value: Any, name: str) -> float:
  """A Python/NumPy number or a size-1 array as a float; ValueError naming `name` otherwise."""
  if isinstance(value, numbers.Real) and not isinstance(value, bool):
    return float(value)
  try:
    arr = np.asarray(value)
  except Exception as e:  # noqa: BLE001 -- anything that is not array-like
    raise ValueError(f"`{name}` must be a scalar number, got {type(value)}.") from e
  if arr.size != 1 or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
    raise ValueError(f"`{name}` must be a scalar number, got shape {arr.shape} dtype {arr.dtype}.")
  return float(arr.reshape(()))


class MetricsWriter:
  """Appends scalar metrics per step to `workdir/metrics.jsonl` and TensorBoard.

  Args:
    workdir: the run's folder (created if missing).
    tensorboard: also write TensorBoard event files under `workdir/tb/` with tensorboardX.
  """

  def __init__(self, workdir: Any, *, tensorboard: bool = True):
    if not isinstance(workdir, (str, os.PathLike)) or not os.fspath(workdir):
      raise ValueError(f"`workdir` must be a non-empty path, got {workdir!r}.")
    self.workdir = os.fspath(workdir)
    self.path = os.path.join(self.workdir, "metrics.jsonl")
    self._active = jax.process_index() == 0
    self._file = None
    self._tb = None
    if not self._active:
      return
    os.makedirs(self.workdir, exist_ok=True)
    self._file = open(self.path, "a")
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(logdir=os.path.join(self.workdir, "tb"))

  def write(self, step: Any, metrics: Mapping[str, Any]) -> None:
    """Writes one line `{"step": step, **metrics}` and one TensorBoard scalar per metric.

    Args:
      step: the update step, a non-negative integer (Python int or 0-d integer array).
      metrics: `{name: scalar}`; names are non-empty strings other than "step", values Python
        numbers, NumPy scalars or size-1 (jax or numpy) arrays.
    """
    if isinstance(step, (bool, np.bool_)):
      raise ValueError(f"`step` must be a non-negative integer, got {step!r}.")
    arr = np.asarray(step)
    if arr.shape != () or not np.issubdtype(arr.dtype, np.integer) or arr < 0:
      raise ValueError(f"`step` must be a non-negative integer, got {step!r}.")
    step = int(arr)
    if not isinstance(metrics, Mapping):
      raise ValueError(f"`metrics` must be a dict of scalars, got {type(metrics)}.")
    values = {}
    for k, v in metrics.items():
      if not isinstance(k, str) or not k or k == "step":
        raise ValueError(f"`metrics` keys must be non-empty strings other than 'step', got {k!r}.")
      values[k] = _as_float(v, f"metrics[{k!r}]")
    if self._file is None:
      if self._active:
        raise ValueError("`MetricsWriter.write` called after `close`.")
      return
    self._file.write(json.dumps({"step": step, **values}) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in values.items():
        self._tb.add_scalar(k, v, global_step=step)
      self._tb.flush()

  def close(self) -> None:
    """Flushes and closes the files; further writes raise."""
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
