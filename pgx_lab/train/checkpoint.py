"""`Checkpointer`: orbax checkpoints of a `TrainState` every K steps, keeping the last N.

Orbax's `CheckpointManager` does the saving (asynchronously), pruning and restoring. Two things
are added on top of it:

* Integrity. Orbax (OCDBT + zarr) catches a broken b-tree node or missing metadata, but a flipped
  byte inside a large array's data file comes back as silently wrong numbers. So once a save has
  committed, the sha256 and size of every file of that step are written to
  `<step>/pgx_lab_checksums.json`. `restore_latest` checks them first: a step whose files differ
  (truncated, overwritten, deleted) is moved to `directory/corrupted/` and the previous step is
  restored with a warning naming the bad step. A step without checksums (a crash between the
  commit and the checksum, or a checkpoint written by plain orbax) is only as safe as orbax's own
  checks: if orbax cannot read it, it is skipped with a warning (and left in place).
* A work-directory fingerprint. `fingerprint` (e.g. the config minus run-length fields) is written
  to `directory/fingerprint.json` on first use; reopening the directory with a different one raises
  `IncompatibleWorkdirError` naming the differing fields, so a run never resumes from a checkpoint
  of a different experiment.
"""

import hashlib
import json
import numbers
import os
import warnings
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

_CHECKSUMS = "pgx_lab_checksums.json"
_FINGERPRINT = "fingerprint.json"
_QUARANTINE = "corrupted"


class IncompatibleWorkdirError(ValueError):
  """The work directory holds checkpoints of a run with a different fingerprint."""


def _as_step(step: Any, name: str = "step") -> int:
  """`step` (a Python/NumPy integer or a 0-d integer array) as a non-negative int."""
  if isinstance(step, (bool, np.bool_)):
    raise ValueError(f"`{name}` must be a non-negative integer, got {step!r}.")
  if not isinstance(step, numbers.Integral):
    arr = np.asarray(step)
    if arr.shape != () or not np.issubdtype(arr.dtype, np.integer):
      raise ValueError(f"`{name}` must be a non-negative integer, got {step!r}.")
    step = arr.item()
  if step < 0:
    raise ValueError(f"`{name}` must be a non-negative integer, got {step}.")
  return int(step)


def _flatten(d: dict, prefix: str = "") -> dict:
  """A nested dict as `{"a.b": leaf}` so that a differing nested field can be named."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict) and v:
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _file_digests(step_dir: str) -> dict:
  """`{relative path: [size, sha256 hex]}` for every file under `step_dir` but the checksums."""
  out = {}
  for root, _, files in os.walk(step_dir):
    for f in files:
      path = os.path.join(root, f)
      rel = os.path.relpath(path, step_dir)
      if rel.startswith(_CHECKSUMS):  # the checksums themselves (and their temporary file)
        continue
      h = hashlib.sha256()
      with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
          h.update(block)
      out[rel] = [os.path.getsize(path), h.hexdigest()]
  return out


class Checkpointer:
  """Saves every `save_every` steps, keeps the last `keep`, restores the latest good one.

  Args:
    directory: folder of the checkpoints (created if missing); one sub-folder per saved step.
    keep: how many of the most recent checkpoints to keep (int >= 1).
    save_every: `save(step)` saves when `step % save_every == 0` (int >= 1).
    fingerprint: a JSON-able dict describing the run (e.g. the config minus run-length fields),
      or None for no check. Written to `directory/fingerprint.json` on first use; a different
      one raises `IncompatibleWorkdirError` naming the differing fields.
    async_save: save in a background thread (orbax's async checkpointing); `wait()` blocks
      until the pending save has committed.
  """

  def __init__(self, directory: Any, *, keep: int = 3, save_every: int = 1,
               fingerprint: Optional[dict] = None, async_save: bool = True):
    if not isinstance(directory, (str, os.PathLike)) or not os.fspath(directory):
      raise ValueError(f"`directory` must be a non-empty path, got {directory!r}.")
    for name, value in (("keep", keep), ("save_every", save_every)):
      if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
    if fingerprint is not None:
      if not isinstance(fingerprint, dict):
        raise ValueError(f"`fingerprint` must be a dict or None, got {type(fingerprint)}.")
      try:  # Round trip so that tuples and lists compare equal to what is on disk.
        fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))
      except (TypeError, ValueError) as e:
        raise ValueError(f"`fingerprint` must be JSON-serialisable: {e}") from e
    self.directory = os.path.abspath(os.fspath(directory))
    self.save_every = int(save_every)
    self.keep = int(keep)
    os.makedirs(self.directory, exist_ok=True)
    if fingerprint is not None:
      self._check_fingerprint(fingerprint)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=self.keep,
                                             enable_async_checkpointing=async_save))
    self._pending = []  # steps saved whose checksums are not written yet

  def _check_fingerprint(self, fingerprint: dict) -> None:
    """Writes `fingerprint.json` if absent; raises if the stored one differs."""
    path = os.path.join(self.directory, _FINGERPRINT)
    if not os.path.exists(path):
      if jax.process_index() == 0:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
          json.dump(fingerprint, f, indent=2, sort_keys=True)
        os.replace(tmp, path)
      return
    with open(path) as f:
      stored = json.load(f)
    old, new = _flatten(stored), _flatten(fingerprint)
    missing = object()
    diff = sorted(k for k in set(old) | set(new) if old.get(k, missing) != new.get(k, missing))
    if diff:
      detail = "; ".join(f"{k}: stored {old.get(k, '<absent>')!r}, now {new.get(k, '<absent>')!r}"
                         for k in diff)
      raise IncompatibleWorkdirError(
          f"The work directory {self.directory} belongs to a different run: fields "
          f"{', '.join(diff)} differ ({detail}). Use a new directory, or the same config.")

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _write_pending_checksums(self) -> None:
    """Writes the checksums of the saves that have committed (call after the manager's wait)."""
    pending, self._pending = self._pending, []
    if jax.process_index() != 0:
      return
    for step in pending:
      step_dir = self._step_dir(step)
      if not os.path.isdir(step_dir):  # pruned already
        continue
      digests = _file_digests(step_dir)
      tmp = os.path.join(step_dir, _CHECKSUMS + ".tmp")
      with open(tmp, "w") as f:
        json.dump(digests, f)
      os.replace(tmp, os.path.join(step_dir, _CHECKSUMS))

  def save(self, step: Any, state: Any, *, force: bool = False) -> bool:
    """Saves `state` at `step` when `step % save_every == 0` or `force`.

    Args:
      step: the update step, a non-negative integer (Python int or 0-d integer array).
      state: the pytree to save (a `TrainState`); device arrays are copied to the host before
        this returns, so the caller may donate or overwrite them afterwards.
      force: save even when `step` is not a multiple of `save_every`.

    Returns:
      True when a checkpoint for `step` was started; False when skipped (not a multiple of
      `save_every`, or `step` is already saved).
    """
    step = _as_step(step)
    if not force and step % self.save_every:
      return False
    self._manager.wait_until_finished()
    self._write_pending_checksums()
    if step in self._manager.all_steps():
      return False
    saved = bool(self._manager.save(step, args=ocp.args.StandardSave(state), force=True))
    if saved:
      self._pending.append(step)
    return saved

  def _verify(self, step: int) -> Optional[str]:
    """None when the files of `step` match its checksums (or it has none); else the reason."""
    path = os.path.join(self._step_dir(step), _CHECKSUMS)
    if not os.path.exists(path):
      return None
    try:
      with open(path) as f:
        expected = json.load(f)
    except (OSError, ValueError) as e:
      return f"unreadable checksum file ({e})"
    actual = _file_digests(self._step_dir(step))
    bad = sorted(k for k in expected if actual.get(k) != expected[k])
    if not bad:
      return None
    what = ["missing" if k not in actual else
            ("truncated/resized" if actual[k][0] != expected[k][0] else "content changed")
            for k in bad]
    return "; ".join(f"{k} {w}" for k, w in zip(bad, what))

  def _quarantine(self, step: int) -> str:
    """Moves the bad step out of orbax's sight, to `directory/corrupted/<step>[.n]`."""
    dest_root = os.path.join(self.directory, _QUARANTINE)
    os.makedirs(dest_root, exist_ok=True)
    dest, n = os.path.join(dest_root, str(step)), 0
    while os.path.exists(dest):
      n += 1
      dest = os.path.join(dest_root, f"{step}.{n}")
    os.replace(self._step_dir(step), dest)
    self._manager.reload()
    return dest

  def restore_latest(self, abstract_state: Any) -> tuple:
    """Restores the newest intact checkpoint.

    Args:
      abstract_state: the target structure, e.g. `jax.eval_shape(lambda: state)` (leaves
        `jax.ShapeDtypeStruct`, with a `sharding` to restore sharded); it fixes the container
        types, so optax states come back as their NamedTuples and a `TrainState` as itself.

    Returns:
      `(state, step)`, or `(None, None)` when nothing has been saved.

    Raises:
      RuntimeError: checkpoints exist but none can be restored.
      Any orbax error of a step whose checksums match (the files are intact, so the error is
      the caller's, e.g. an `abstract_state` of another structure).
    """
    self.wait()
    self._manager.reload()
    steps = sorted(self._manager.all_steps(), reverse=True)
    errors = []
    for step in steps:
      reason = self._verify(step)
      if reason is not None:
        dest = self._quarantine(step)
        warnings.warn(f"Checkpoint at step {step} in {self.directory} is corrupted ({reason}); "
                      f"moved it to {dest} and trying the previous one.", RuntimeWarning,
                      stacklevel=2)
        errors.append(f"step {step}: {reason}")
        continue
      verified = os.path.exists(os.path.join(self._step_dir(step), _CHECKSUMS))
      try:
        state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
      except Exception as e:  # noqa: BLE001 -- orbax/tensorstore raise many types
        if verified:
          raise
        warnings.warn(f"Checkpoint at step {step} in {self.directory} cannot be read "
                      f"({type(e).__name__}: {str(e)[:300]}); trying the previous one.",
                      RuntimeWarning, stacklevel=2)
        errors.append(f"step {step}: {type(e).__name__}")
        continue
      return state, step
    if errors:
      raise RuntimeError(f"No checkpoint in {self.directory} can be restored: {errors}.")
    return None, None

  def latest_step(self) -> Optional[int]:
    """The newest saved step (committed or in flight), or None."""
    return self._manager.latest_step()

  def wait(self) -> None:
    """Blocks until the pending save has committed and its checksums are written."""
    self._manager.wait_until_finished()
    self._write_pending_checksums()

  def close(self) -> None:
    """Waits for the pending save, then releases orbax's resources."""
    self.wait()
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
