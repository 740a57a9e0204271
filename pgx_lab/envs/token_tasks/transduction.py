"""Copy, reverse and sort: string transductions of a random digit string.

Prompt:  BOS <marker> x_1 ... x_d SEP        (d + 3 tokens, left-padded to P = max_difficulty + 3)
Answer:  copy: x_1 ... x_d;  reverse: x_d ... x_1;  sort: x ascending (ties kept);  then EOS.

The difficulty is the string length d in [min_difficulty, max_difficulty]; the class id is
d - min_difficulty. Symbols are the digits 0 .. num_symbols - 1 drawn i.i.d. uniformly
(num_symbols = 2 gives binary strings, an easier task). Copy and reverse are the algorithmic tasks
of Graves et al. 2014 (Neural Turing Machines) and Zaremba & Sutskever 2014; sort also there.
"""

import dataclasses

import jax
import jax.numpy as jnp

from pgx_lab.envs.token_tasks import base
from pgx_lab.envs.token_tasks import prompts as prompts_lib
from pgx_lab.envs.token_tasks import vocab

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class _Transduction(base.TokenTask):
  """Shared sampling of copy / reverse / sort; subclasses define `_transform`."""

  num_symbols: int = 10

  def __post_init__(self):
    super().__post_init__()
    k = self.num_symbols
    if not prompts_lib.is_int(k) or not 2 <= k <= vocab.NUM_DIGITS:
      raise ValueError(f"`num_symbols` must be an int in [2, {vocab.NUM_DIGITS}], "
                       f"got {self.num_symbols!r}.")

  @property
  def prompt_len(self) -> int:
    return self.max_difficulty + 3

  @property
  def answer_len(self) -> int:
    return self.max_difficulty

  def _transform(self, x: Array, length: Array) -> Array:
    """[n, L] strings (PAD beyond `length`) -> [n, L] answers (PAD beyond `length`)."""
    raise NotImplementedError

  def _sample(self, key, difficulty):
    n, width = difficulty.shape[0], self.max_difficulty
    pos = jnp.arange(width)[None, :]
    x = jax.random.randint(key, (n, width), 0, self.num_symbols, jnp.int32) + vocab.DIGIT_0
    x = jnp.where(pos < difficulty[:, None], x, vocab.PAD)
    head = jnp.broadcast_to(jnp.array([vocab.BOS, vocab.TASK_MARKERS[self.name]], jnp.int32),
                            (n, 2))
    content = jnp.concatenate([head, x, jnp.full((n, 1), vocab.PAD, jnp.int32)], axis=1)
    cpos = jnp.arange(content.shape[1])[None, :]
    content = jnp.where(cpos == difficulty[:, None] + 2, vocab.SEP, content)
    return content, difficulty + 3, self._transform(x, difficulty), difficulty


@dataclasses.dataclass(frozen=True)
class CopyTask(_Transduction):
  """Copy the string (see the module docstring)."""

  name = "copy"

  def _transform(self, x, length):
    return x


@dataclasses.dataclass(frozen=True)
class ReverseTask(_Transduction):
  """Reverse the string (see the module docstring)."""

  name = "reverse"

  def _transform(self, x, length):
    pos = jnp.arange(x.shape[1])[None, :]
    return prompts_lib.take(x, length[:, None] - 1 - pos, pos < length[:, None])


@dataclasses.dataclass(frozen=True)
class SortTask(_Transduction):
  """Sort the string's digits in ascending order (see the module docstring)."""

  name = "sort"

  def _transform(self, x, length):
    pos = jnp.arange(x.shape[1])[None, :]
    valid = pos < length[:, None]
    big = jnp.iinfo(jnp.int32).max
    ordered = jnp.sort(jnp.where(valid, x, big), axis=1)
    return jnp.where(valid, ordered, vocab.PAD).astype(jnp.int32)
