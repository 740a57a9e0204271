"""The prompt batch of the token tasks and the array helpers that build it: left padding,
gathers with PAD, width fitting, and repetition into groups of G responses per prompt."""

from typing import Any, Optional, Tuple, Union

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from pgx_lab import validation
from pgx_lab.envs.token_tasks import vocab

Array = jax.Array
Difficulty = Optional[Union[int, Array]]


def is_int(x: Any) -> bool:
  """True for a Python or numpy integer that is not a bool."""
  return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


@flax.struct.dataclass
class Prompts:
  """A batch of n prompts of one task (a pytree: it passes through jit, vmap and tree maps).

  Attributes:
    tokens: [n, P] int32 prompt tokens, left-padded with PAD (the prompt ends at column P - 1).
    mask: [n, P] int32, 1 on prompt tokens, 0 on the left padding.
    target: [n, L] int32 reference answer tokens (without EOS), right-padded with PAD.
    target_len: [n] int32 number of answer tokens in `target`.
    class_id: [n] int32 prompt class (the difficulty level index; see the task's docstring).
    difficulty: [n] int32 difficulty level of each prompt.
  """

  tokens: Array
  mask: Array
  target: Array
  target_len: Array
  class_id: Array
  difficulty: Array

  @property
  def num_prompts(self) -> int:
    return self.tokens.shape[0]


def left_pad(seq: Array, lengths: Array, width: int) -> Tuple[Array, Array]:
  """Right-aligns left-aligned sequences into `width` columns.

  Args:
    seq: [n, S] int tokens, row i holding its sequence in columns [0, lengths[i]).
    lengths: [n] int, each in [0, width] and <= S.
    width: the output width.

  Returns:
    tokens [n, width] int32 (PAD on the left) and mask [n, width] int32.
  """
  idx = jnp.arange(width)[None, :] - (width - lengths[:, None])
  valid = idx >= 0
  tok = jnp.take_along_axis(seq, jnp.clip(idx, 0, seq.shape[1] - 1), axis=1)
  return jnp.where(valid, tok, vocab.PAD).astype(jnp.int32), valid.astype(jnp.int32)


def take(seq: Array, idx: Array, valid: Array) -> Array:
  """seq[i, idx[i, j]] where `valid[i, j]`, PAD elsewhere (idx is clipped into range)."""
  out = jnp.take_along_axis(seq, jnp.clip(idx, 0, seq.shape[1] - 1), axis=1)
  return jnp.where(valid, out, vocab.PAD).astype(jnp.int32)


def fit_width(x: Array, width: int) -> Array:
  """[n, S] -> [n, width], truncating or right-padding with PAD."""
  if x.shape[1] >= width:
    return x[:, :width]
  return jnp.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=vocab.PAD)


def check_prompts(prompts: Any) -> None:
  """Raises ValueError naming `prompts` unless it is a `Prompts` with consistent shapes."""
  if not isinstance(prompts, Prompts):
    raise ValueError(f"`prompts` must be a Prompts batch, got {type(prompts).__name__}.")
  validation.check_array("prompts.tokens", prompts.tokens, ndim=2, kind="int")
  n = prompts.tokens.shape[0]
  validation.check_shape("prompts.mask", prompts.mask, prompts.tokens.shape,
                         against="prompts.tokens")
  validation.check_array("prompts.target", prompts.target, ndim=2, kind="int")
  for name in ("target", "target_len", "class_id", "difficulty"):
    x = getattr(prompts, name)
    validation.check_shape(f"prompts.{name}", x, (n,) + tuple(x.shape[1:]),
                           against="prompts.tokens rows")


def repeat_for_groups(prompts: Prompts, group_size: int) -> Tuple[Prompts, Array]:
  """Repeats each prompt `group_size` (G) times, for G responses per prompt (GRPO, RLOO).

  Args:
    prompts: n prompts.
    group_size: G >= 1 (a static int).

  Returns:
    (prompts with n * G rows, the G copies of prompt i at rows [i * G, (i + 1) * G)),
    group_ids [n * G] int32 with value i on those rows.
  """
  check_prompts(prompts)
  if not is_int(group_size) or group_size < 1:
    raise ValueError(f"`group_size` must be a positive int, got {group_size!r}.")
  rep = jax.tree.map(lambda x: jnp.repeat(x, group_size, axis=0), prompts)
  group_ids = jnp.repeat(jnp.arange(prompts.num_prompts, dtype=jnp.int32), group_size)
  return rep, group_ids
