"""Offline RL datasets in the RLDS episode format, stored with tensorflow-datasets (no TensorFlow).

Format (RLDS: Ramos et al. 2021, arXiv:2111.02767, and the google-research/rlds README): a dataset
is a sequence of episodes; an episode holds a `steps` sequence and optional per-episode metadata
scalars (e.g. `behaviour`). Step t holds the observation o_t, the action a_t taken at o_t, the
reward r_t and discount d_t that follow a_t, and the flags `is_first`, `is_last`, `is_terminal`,
plus the optional `behaviour_logp` (log-prob of a_t under the behaviour policy). An episode of T
transitions has T + 1 steps: the last one holds the final observation o_T with is_last=True and
is_terminal=True iff the episode entered a terminal state (False: truncated by a time limit, so
o_T is the bootstrap observation); its action, reward, discount and logp are padding (zeros).
Here d_t = 0 if a_t entered a terminal state, else 1 (gamma is not folded in).

Storage: one tfds example per episode, written by a `GeneratorBasedBuilder` to ArrayRecord files
and read with `builder.as_data_source()` (never `as_dataset()`, which needs TensorFlow). The fast
path: `steps` is a dict of `tfds.features.Tensor(shape=(None, ...))`, one stacked array per field
per episode. Its bytes are identical to those of a `features.Sequence` of per-step Tensors (same
serialized spec), but `Sequence` encodes step by step (~23 us/step to write) and decodes to lists,
and the nested `features.Dataset` of the tfds RLDS catalogue decodes lazily step by step; here a
write costs ~1.5 us/step and a load is one `np.concatenate` per field (about 1M steps/s measured
for 100k steps). Float arrays are stored as float32, integers as int32 (uint8 stays uint8), bools
as bools. The storage helpers (`write_records`, `read_records`) are shared with `token_datasets`.
"""

import glob
import json
import os
import re
import shutil
import tempfile
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import flax.struct
import jax
import numpy as np
import tensorflow_datasets as tfds

from pgx_lab.types import Trajectory

MARKER = "pgx_lab_dataset.json"
STEP_FIELDS = ("observation", "action", "reward", "discount", "is_first", "is_last", "is_terminal")
_SCALAR_DTYPES = {"reward": np.float32, "discount": np.float32, "behaviour_logp": np.float32,
                  "is_first": np.bool_, "is_last": np.bool_, "is_terminal": np.bool_}


class IncompleteDatasetError(ValueError):
  """The directory exists but does not hold a complete pgx_lab dataset (half-written, truncated
  files, or counts that disagree with the completion marker)."""


class _ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder whose name, features and examples are given at construction (one split, 'train')."""

  VERSION = tfds.core.Version("1.0.0")
  # tfds 4.9.10 looks for a checksums file next to the builder's code through
  # `importlib_resources`, which it only requires on Python < 3.9; there are no downloads here.
  code_path = None

  def __init__(self, *, name: str, features: Any, examples: Iterable[Tuple[int, Any]],
               data_dir: str):
    self.name = name
    self._features, self._examples = features, examples
    super().__init__(data_dir=data_dir, file_format="array_record")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=self._features, disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    yield from self._examples


def _storage_dtype(x: np.ndarray, name: str) -> np.dtype:
  """The dtype `x` is stored as (float32, int32, uint8 or bool); ValueError naming `name` else."""
  if x.dtype == np.bool_ or x.dtype == np.uint8:
    return x.dtype
  if np.issubdtype(x.dtype, np.floating):
    return np.dtype(np.float32)
  if np.issubdtype(x.dtype, np.integer):
    if x.size and (x.min() < np.iinfo(np.int32).min or x.max() > np.iinfo(np.int32).max):
      raise ValueError(f"`{name}` holds integers outside the int32 range.")
    return np.dtype(np.int32)
  raise ValueError(f"`{name}` must be a bool, integer or float array, got dtype {x.dtype}.")


def write_records(directory: str, *, kind: str, name: str, features: Any,
                  examples: Iterable[Any], counts: Mapping[str, int],
                  metadata: Optional[Mapping[str, Any]], overwrite: bool = False) -> str:
  """Writes `examples` as a tfds ArrayRecord dataset into `directory`, atomically.

  The dataset is built in a hidden sibling temp directory, the completion marker (`MARKER`: kind,
  counts, file sizes, metadata) is written last, and only then is the folder renamed to
  `directory`; a writer killed midway leaves no `directory` behind.

  Args:
    directory: the folder to create (its parent is created if needed).
    kind: what the dataset holds ("rlds_episodes", "token_rewards", ...), checked on read.
    name: tfds dataset name, lower_snake_case.
    features: the `tfds.features.FeaturesDict` of one example.
    examples: iterable of example dicts matching `features`.
    counts: totals the reader checks, at least {"num_examples": N}.
    metadata: JSON-serialisable dict stored in the marker (None: {}).
    overwrite: replace an existing `directory` (else FileExistsError).

  Returns:
    The absolute path of the dataset.
  """
  if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
    raise ValueError(f"`name` must be lower_snake_case (tfds dataset name), got {name!r}.")
  metadata = dict(metadata or {})
  try:
    json.dumps(metadata)
  except TypeError as e:
    raise ValueError(f"`metadata` must be JSON-serialisable: {e}") from e
  path = os.path.abspath(os.fspath(directory))
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"`directory` {path!r} already exists (pass overwrite=True).")
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.incomplete-", dir=parent)
  try:
    builder = _ArrayRecordBuilder(name=name, features=features, examples=enumerate(examples),
                                  data_dir=tmp)
    builder.download_and_prepare()
    built = os.fspath(builder.data_dir)
    files = {f: os.path.getsize(os.path.join(built, f))
             for f in builder.info.splits["train"].filenames}
    marker = dict(kind=kind, name=name, files=files, metadata=metadata, **counts)
    with open(os.path.join(built, MARKER), "w") as f:
      json.dump(marker, f)
    old = os.path.join(tmp, "replaced") if os.path.exists(path) else None
    if old:
      os.rename(path, old)
    try:
      os.rename(built, path)
    except BaseException:
      if old:
        os.rename(old, path)
      raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return path


def read_records(directory: str, kind: str) -> Tuple[List[Dict[str, Any]], Dict[str, Any], Any]:
  """Checks that `directory` holds a complete dataset of `kind` and returns its parsed examples.

  Returns:
    (examples, marker, dtypes): a list of nested dicts of NumPy arrays or scalars (each
    variable-length field one array) in write order; the completion marker's dict (counts,
    `metadata`); the nested dict of stored NumPy dtypes (cast after stacking: cheaper).

  Raises:
    FileNotFoundError: naming the path, if `directory` does not exist.
    IncompleteDatasetError: naming the path, if the marker, a file, or a count is missing or wrong.
    ValueError: if the dataset is of another kind.
  """
  path = os.path.abspath(os.fspath(directory))
  if not os.path.isdir(path):
    pattern = f".{os.path.basename(path)}.incomplete-*"
    partial = glob.glob(os.path.join(os.path.dirname(path), pattern))
    hint = f"; an unfinished write was left at {partial[0]!r}" if partial else ""
    raise FileNotFoundError(f"no dataset at {path!r}: the directory does not exist{hint}.")
  marker_path = os.path.join(path, MARKER)
  if not os.path.isfile(marker_path):
    raise IncompleteDatasetError(
        f"{path!r} is not a complete dataset: its completion marker {MARKER} is missing "
        "(half-written, or not written by pgx_lab.data).")
  try:
    with open(marker_path) as f:
      marker = json.load(f)
  except json.JSONDecodeError as e:
    raise IncompleteDatasetError(f"dataset {path!r}: unreadable marker {marker_path!r}: {e}") from e
  if marker.get("kind") != kind:
    raise ValueError(f"{path!r} holds a {marker.get('kind')!r} dataset, not {kind!r}.")
  expected = {"dataset_info.json": None, "features.json": None, **marker["files"]}
  for fname, size in expected.items():
    fpath = os.path.join(path, fname)
    if not os.path.isfile(fpath):
      raise IncompleteDatasetError(f"dataset {path!r} is incomplete: {fpath!r} is missing.")
    if size is not None and os.path.getsize(fpath) != size:
      raise IncompleteDatasetError(
          f"dataset {path!r} is incomplete: {fpath!r} has {os.path.getsize(fpath)} bytes, "
          f"the marker says {size}.")
  builder = tfds.builder_from_directory(path)
  source = builder.as_data_source(split="train")
  if len(source) != marker["num_examples"]:
    raise IncompleteDatasetError(f"dataset {path!r} has {len(source)} examples, the marker says "
                                 f"{marker['num_examples']}.")
  examples = source.__getitems__(list(range(len(source))))
  dtypes = jax.tree.map(lambda t: t.np_dtype, builder.info.features.get_tensor_info())
  return examples, marker, dtypes


@flax.struct.dataclass
class Episodes:
  """All steps of a dataset, stacked episode after episode (N steps, E episodes, host arrays).

  Attributes:
    obs: [N, ...] observations (an array or a dict of arrays).
    actions: [N, ...] actions (padding on last steps).
    rewards, discounts: [N] float32 (padding on last steps).
    is_first, is_last, is_terminal: [N] bool RLDS flags.
    episode_id: [N] int32 index of each step's episode, in [0, E).
    logp: [N] float32 behaviour log-probs, or None if the dataset stores none.
    episode_metadata: dict of [E] arrays (e.g. `behaviour`).
    metadata: the dataset's JSON metadata (static).
  """

  obs: Any
  actions: np.ndarray
  rewards: np.ndarray
  discounts: np.ndarray
  is_first: np.ndarray
  is_last: np.ndarray
  is_terminal: np.ndarray
  episode_id: np.ndarray
  logp: Optional[np.ndarray] = None
  episode_metadata: Dict[str, np.ndarray] = flax.struct.field(default_factory=dict)
  metadata: Dict[str, Any] = flax.struct.field(pytree_node=False, default_factory=dict)

  @property
  def num_episodes(self) -> int:
    return int(self.episode_id[-1]) + 1

  @property
  def episode_lengths(self) -> np.ndarray:
    """[E] number of transitions per episode (steps minus the final-observation step)."""
    return np.bincount(self.episode_id, minlength=self.num_episodes) - 1

  def final_observations(self) -> Any:
    """[E, ...] the last observation of each episode (the bootstrap one where truncated)."""
    return jax.tree.map(lambda x: x[self.is_last], self.obs)

  def to_trajectory(self, max_len: Optional[int] = None) -> Trajectory:
    """The padded batch-major view [E, T] of the transitions, as `pgx_lab.types.Trajectory`.

    Args:
      max_len: T, at least the longest episode's number of transitions (None: exactly that).

    Returns:
      A Trajectory of NumPy arrays: obs/actions/rewards [E, T, ...], logp [E, T] (NaN on the
      transitions if the dataset holds no behaviour log-probs, so a loss that needs them fails
      loudly), terminated/truncated [E, T] bool set only at each
      episode's last transition, mask [E, T] float32 (1 on the episode's transitions).
    """
    lengths = self.episode_lengths
    longest = int(lengths.max())
    max_len = longest if max_len is None else max_len
    if not isinstance(max_len, (int, np.integer)) or max_len < longest:
      raise ValueError(f"`max_len` must be an int >= the longest episode ({longest} transitions)"
                       f", got {max_len!r}.")
    starts = np.flatnonzero(self.is_first)
    t = np.arange(self.episode_id.shape[0]) - starts[self.episode_id]
    rows, cols = self.episode_id[~self.is_last], t[~self.is_last]

    def pad(x, fill=0):
      out = np.full((lengths.shape[0], max_len) + x.shape[1:], fill, x.dtype)
      out[rows, cols] = x[~self.is_last]
      return out

    ends = (np.arange(lengths.shape[0]), lengths - 1)
    terminated = np.zeros((lengths.shape[0], max_len), bool)
    truncated = np.zeros_like(terminated)
    terminated[ends] = self.is_terminal[self.is_last]
    truncated[ends] = ~self.is_terminal[self.is_last]
    logp = self.logp if self.logp is not None else np.full(self.rewards.shape, np.nan, np.float32)
    return Trajectory(obs=jax.tree.map(pad, self.obs), actions=pad(self.actions),
                      rewards=pad(self.rewards), logp=pad(logp), terminated=terminated,
                      truncated=truncated, mask=pad(np.ones_like(self.rewards)))


def _check_episode(i: int, ep: Any, spec: Optional[Dict[str, Any]]) -> Dict[str, Any]:
  """Validates episode `i`; returns its {field: (shape, dtype)} spec (compared with `spec`)."""
  where = f"episodes[{i}]"
  if not isinstance(ep, Mapping) or not isinstance(ep.get("steps"), Mapping):
    raise ValueError(f"`{where}` must be a dict with a 'steps' dict of arrays.")
  steps = ep["steps"]
  missing = [k for k in STEP_FIELDS if k not in steps]
  unknown = [k for k in steps if k not in STEP_FIELDS + ("behaviour_logp",)]
  if missing or unknown:
    raise ValueError(f"`{where}['steps']` misses {missing} / has unknown fields {unknown}.")
  flat, root = {}, {}
  for k, v in steps.items():
    for path, leaf in jax.tree_util.tree_leaves_with_path(v):
      flat[k + jax.tree_util.keystr(path)] = np.asarray(leaf)
      root[k + jax.tree_util.keystr(path)] = k
  n = flat["reward"].shape[0] if flat["reward"].ndim else 0
  for k, x in flat.items():
    if x.ndim == 0 or x.shape[0] != n:
      raise ValueError(f"`{where}['steps'][{k!r}]` must have leading dim {n} (the number of "
                       f"steps), got shape {x.shape}.")
  if n < 2:
    raise ValueError(f"`{where}` must have at least 2 steps (one transition), got {n}.")
  for k in ("reward", "discount", "is_first", "is_last", "is_terminal", "behaviour_logp"):
    if k in flat and flat[k].ndim != 1:
      raise ValueError(f"`{where}['steps'][{k!r}]` must have shape [steps], got {flat[k].shape}.")
  first, last, term = (flat[k].astype(bool) for k in ("is_first", "is_last", "is_terminal"))
  if not (first[0] and not first[1:].any() and last[-1] and not last[:-1].any()
          and not term[:-1].any()):
    raise ValueError(f"`{where}`: is_first must be set only on the first step, is_last only on "
                     "the last, is_terminal at most on the last.")
  meta = {k: np.asarray(v) for k, v in ep.items() if k != "steps"}
  for k, v in meta.items():
    if v.ndim:
      raise ValueError(f"`{where}[{k!r}]` episode metadata must be a scalar, got {v.shape}.")
  got = {k: (x.shape[1:], _dtype(root[k], x, f"{where}['steps'][{k!r}]"))
         for k, x in flat.items()}
  got.update({"/" + k: ((), _dtype(k, v, f"{where}[{k!r}]")) for k, v in meta.items()})
  if spec is not None and got != spec:
    raise ValueError(f"`{where}` has fields/shapes/dtypes {got}, episodes[0] has {spec}.")
  return got


def _dtype(field: str, x: Any, where: str = "") -> np.dtype:
  """The stored dtype of a leaf of step field (or episode metadata) `field`."""
  return np.dtype(_SCALAR_DTYPES.get(field) or _storage_dtype(np.asarray(x), where or field))


def _cast(ep: Mapping[str, Any]) -> Dict[str, Any]:
  """The episode with every leaf a NumPy array of its stored dtype."""
  cast = lambda k: (lambda x: np.asarray(x).astype(_dtype(k, x)))
  return {k: ({f: jax.tree.map(cast(f), x) for f, x in v.items()} if k == "steps" else cast(k)(v))
          for k, v in ep.items()}


def write_episodes(directory: str, episodes: Sequence[Mapping[str, Any]], *, name: str,
                   metadata: Optional[Mapping[str, Any]] = None, overwrite: bool = False) -> str:
  """Writes RLDS episodes to `directory` (atomically; see `write_records`).

  Args:
    directory: the dataset folder to create.
    episodes: non-empty list of {"steps": {field: [S_e, ...]}, **metadata scalars}; the step
      fields are `STEP_FIELDS` (observation may be a dict of arrays) plus optional
      `behaviour_logp`; all episodes share fields, trailing shapes and dtypes; S_e >= 2.
      `generate.episode_from_transitions` builds one from a rollout.
    name: tfds dataset name (lower_snake_case).
    metadata: JSON-serialisable dataset metadata (env name, behaviour names, ...).
    overwrite: replace an existing dataset.

  Returns:
    The absolute path written.
  """
  episodes = list(episodes)
  if not episodes:
    raise ValueError("`episodes` is empty: there is nothing to write.")
  spec = _check_episode(0, episodes[0], None)
  for i, ep in enumerate(episodes[1:], 1):
    _check_episode(i, ep, spec)
  tensor = lambda x, shape: tfds.features.Tensor(shape=shape, dtype=x.dtype)
  ep0 = _cast(episodes[0])
  features = tfds.features.FeaturesDict({
      "steps": jax.tree.map(lambda x: tensor(x, (None,) + x.shape[1:]), ep0["steps"]),
      **{k: tensor(v, ()) for k, v in ep0.items() if k != "steps"}})
  num_steps = sum(int(np.shape(ep["steps"]["reward"])[0]) for ep in episodes)
  return write_records(directory, kind="rlds_episodes", name=name, features=features,
                       examples=(_cast(ep) for ep in episodes),
                       counts={"num_examples": len(episodes), "num_steps": num_steps},
                       metadata=metadata, overwrite=overwrite)


def read_episodes(directory: str) -> Episodes:
  """Reads a dataset written by `write_episodes` into stacked arrays (vectorised, see module doc).

  Raises:
    FileNotFoundError / IncompleteDatasetError: naming the path (see `read_records`).
  """
  examples, marker, dtypes = read_records(directory, "rlds_episodes")
  steps = [ex["steps"] for ex in examples]
  lengths = np.array([np.shape(s["reward"])[0] for s in steps])
  if lengths.sum() != marker["num_steps"]:
    raise IncompleteDatasetError(f"dataset {os.path.abspath(directory)!r} has {lengths.sum()} "
                                 f"steps, the marker says {marker['num_steps']}.")
  cat = lambda dtype, *xs: np.concatenate(xs).astype(dtype, copy=False)
  st = {k: jax.tree.map(cat, dtypes["steps"][k], *[s[k] for s in steps]) for k in steps[0]}
  meta = {k: np.array([ex[k] for ex in examples], dtypes[k]) for k in examples[0] if k != "steps"}
  return Episodes(obs=st["observation"], actions=st["action"], rewards=st["reward"],
                  discounts=st["discount"], is_first=st["is_first"], is_last=st["is_last"],
                  is_terminal=st["is_terminal"],
                  episode_id=np.repeat(np.arange(len(steps), dtype=np.int32), lengths),
                  logp=st.get("behaviour_logp"), episode_metadata=meta,
                  metadata=marker["metadata"])
