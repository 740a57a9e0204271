"""What every token task shares: difficulty levels and classes, answer parsing, exact-match /
partial-credit rewards and demonstrations (the `Prompts` batch is in `prompts.py`).

A task is a frozen (hashable) dataclass. Its difficulty levels are the integers
[min_difficulty, max_difficulty] (a sequence length, a number of digits, a number of keywords);
the prompt width P and the target width L are set by `max_difficulty`, so every batch of a task
has the same static shapes whatever its difficulties, and a curriculum can pick a difficulty per
prompt inside `jit`. The class id of a prompt is its level index, `difficulty - min_difficulty`,
in [0, num_classes) (for curricula and per-class metrics).

A response is parsed into an answer: its tokens up to (not including) the first EOS, or up to the
first position where `response_mask` is 0, whichever comes first. Reward types:
  "exact":   1 if the answer equals the target token for token (same length), else 0;
  "partial": (# positions t < min(len_answer, len_target) with answer_t = target_t)
             / max(len_answer, len_target), so wrong, missing and extra tokens all cost credit;
             it is 1 exactly when "exact" is 1.
(The keyword task overrides the scoring; see `keywords.py`.)
"""

import dataclasses
import functools
from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from pgx_lab import validation
from pgx_lab.envs.token_tasks import vocab
from pgx_lab.envs.token_tasks.prompts import Difficulty
from pgx_lab.envs.token_tasks.prompts import Prompts
from pgx_lab.envs.token_tasks.prompts import check_prompts
from pgx_lab.envs.token_tasks.prompts import fit_width
from pgx_lab.envs.token_tasks.prompts import is_int
from pgx_lab.envs.token_tasks.prompts import left_pad

Array = jax.Array
REWARD_TYPES = ("exact", "partial")


def extract_answer(response: Array, response_mask: Array) -> Tuple[Array, Array]:
  """Parses responses into answers.

  Args:
    response: [n, N] int response tokens.
    response_mask: [n, N] 1 (or True) on generated tokens, 0 after the end of generation.

  Returns:
    answer [n, N] int32 (the tokens before the first EOS or unmasked position, PAD after) and
    answer_len [n] int32.
  """
  n_tok = response.shape[1]
  stop = jnp.logical_or(response_mask <= 0, response == vocab.EOS)
  answer_len = jnp.where(jnp.any(stop, axis=1), jnp.argmax(stop, axis=1), n_tok)
  keep = jnp.arange(n_tok)[None, :] < answer_len[:, None]
  return jnp.where(keep, response, vocab.PAD).astype(jnp.int32), answer_len.astype(jnp.int32)


def positional_reward(target: Array, target_len: Array, answer: Array, answer_len: Array,
                      reward_type: str) -> Array:
  """Exact match or positional partial credit (module docstring), [n] float32.

  Args:
    target: [n, L] int target tokens, target_len: [n] int.
    answer: [n, S] int parsed answers (`extract_answer`), answer_len: [n] int.
    reward_type: "exact" or "partial".
  """
  ans = fit_width(answer, target.shape[1])
  pos = jnp.arange(target.shape[1])[None, :]
  both = pos < jnp.minimum(target_len, answer_len)[:, None]
  hits = jnp.sum(jnp.logical_and(both, ans == target), axis=1)
  exact = jnp.logical_and(answer_len == target_len, hits == target_len)
  if reward_type == "exact":
    return exact.astype(jnp.float32)
  longer = jnp.maximum(jnp.maximum(target_len, answer_len), 1)
  return hits.astype(jnp.float32) / longer.astype(jnp.float32)


def check_levels(name: str, lo: Any, hi: Any, upper: Optional[int] = None) -> None:
  """Validates a difficulty range: ints with 1 <= lo <= hi (<= upper when given)."""
  for arg, v in ((f"min_{name}", lo), (f"max_{name}", hi)):
    if not is_int(v) or v < 1:
      raise ValueError(f"`{arg}` must be a positive int, got {v!r}.")
  if hi < lo:
    raise ValueError(f"`max_{name}` ({hi}) must be >= `min_{name}` ({lo}).")
  if upper is not None and hi > upper:
    raise ValueError(f"`max_{name}` must be <= {upper}, got {hi}.")


@dataclasses.dataclass(frozen=True)
class TokenTask:
  """Base class. Subclasses set `name`, `prompt_len`, `answer_len` and implement `_sample`;
  they may override `_score` (the default is `positional_reward`)."""

  min_difficulty: int = 1
  max_difficulty: int = 4
  reward_type: str = "exact"

  name = "task"

  def __post_init__(self):
    check_levels("difficulty", self.min_difficulty, self.max_difficulty, self._max_level())
    validation.check_option("reward_type", self.reward_type, REWARD_TYPES)

  def _max_level(self) -> Optional[int]:
    return None

  @property
  def prompt_len(self) -> int:
    """P, the prompt width (set by max_difficulty)."""
    raise NotImplementedError

  @property
  def answer_len(self) -> int:
    """L, the target width: the longest answer, without EOS."""
    raise NotImplementedError

  @property
  def response_len(self) -> int:
    """L + 1: the longest demonstration (answer and EOS); use it as `max_new_tokens`."""
    return self.answer_len + 1

  @property
  def num_classes(self) -> int:
    return self.max_difficulty - self.min_difficulty + 1

  @property
  def vocab_size(self) -> int:
    return vocab.VOCAB_SIZE

  def _sample(self, key: Array, difficulty: Array):
    """Returns (content [n, S] left-aligned prompts, content_len [n], target [n, L], target_len)."""
    raise NotImplementedError

  def _score(self, prompts: Prompts, answer: Array, answer_len: Array) -> Array:
    return positional_reward(prompts.target, prompts.target_len, answer, answer_len,
                             self.reward_type)

  def check_difficulty(self, n: int, difficulty: Difficulty) -> Optional[Array]:
    """Validates `difficulty` for n prompts: None (levels drawn uniformly), an int (all prompts),
    or an int array [n] or [] (per prompt). Concrete values outside
    [min_difficulty, max_difficulty] raise ValueError; traced values are later clipped into range.
    Returns None or an int32 array."""
    if difficulty is None:
      return None
    lo, hi = self.min_difficulty, self.max_difficulty
    if is_int(difficulty):
      difficulty = np.int32(difficulty)
    validation.check_array("difficulty", difficulty, ndim=(0, 1), kind="int")
    if difficulty.ndim == 1:
      validation.check_shape("difficulty", difficulty, (n,), against="n")
    if not isinstance(difficulty, jax.core.Tracer):
      v = np.asarray(difficulty)
      if np.any(v < lo) or np.any(v > hi):
        raise ValueError(f"`difficulty` must lie in [{lo}, {hi}] for task {self.name!r}, "
                         f"got {v.tolist()}.")
    return jnp.asarray(difficulty, jnp.int32)

  def sample_prompts(self, key: Array, n: int, difficulty: Difficulty = None) -> Prompts:
    """Draws n prompts (the work is jitted with the task and n static).

    Args:
      key: PRNG key.
      n: number of prompts (a static Python int).
      difficulty: None (levels drawn uniformly), an int level, or an int array [n] of levels.

    Returns:
      `Prompts` with tokens [n, prompt_len], target [n, answer_len].
    """
    if not is_int(n) or n < 1:
      raise ValueError(f"`n` must be a positive int, got {n!r}.")
    return self._sample_prompts(key, int(n), self.check_difficulty(n, difficulty))

  @functools.partial(jax.jit, static_argnums=(0, 2))
  def _sample_prompts(self, key, n, difficulty):
    k_level, k_content = jax.random.split(key)
    lo, hi = self.min_difficulty, self.max_difficulty
    if difficulty is None:
      level = jax.random.randint(k_level, (n,), lo, hi + 1, jnp.int32)
    else:
      level = jnp.broadcast_to(jnp.clip(difficulty, lo, hi), (n,))
    content, content_len, target, target_len = self._sample(k_content, level)
    tokens, mask = left_pad(content, content_len, self.prompt_len)
    return Prompts(tokens=tokens, mask=mask, target=target.astype(jnp.int32),
                   target_len=target_len.astype(jnp.int32),
                   class_id=(level - lo).astype(jnp.int32), difficulty=level)

  def reward(self, prompts: Prompts, response: Array, response_mask: Array) -> Array:
    """Verifiable rewards [n] float32 of responses (see the module docstring for the parsing).

    Args:
      prompts: the `Prompts` the responses answer (n rows).
      response: [n, N] int response tokens.
      response_mask: [n, N] 1/True on generated tokens (0 after generation ended).
    """
    check_reward_args(prompts, response, response_mask)
    return self._reward(prompts, response, response_mask)

  @functools.partial(jax.jit, static_argnums=0)
  def _reward(self, prompts, response, response_mask):
    answer, answer_len = extract_answer(response, response_mask)
    return self._score(prompts, answer, answer_len)

  def demonstration(self, prompts: Prompts) -> Array:
    """[n, L + 1] int32 correct responses: the target followed by EOS, PAD after.

    The demonstration's loss mask is `demonstration(prompts) != PAD` (answers never hold PAD)."""
    check_prompts(prompts)
    return _demonstration(prompts.target, prompts.target_len)


def check_reward_args(prompts: Prompts, response: Array, response_mask: Array) -> None:
  """Raises ValueError naming the argument unless prompts [n rows], response [n, N] int and
  response_mask [n, N] fit together."""
  check_prompts(prompts)
  validation.check_array("response", response, ndim=2, kind="int")
  validation.check_array("response_mask", response_mask, ndim=2, kind="number")
  validation.check_shape("response", response, (prompts.num_prompts, response.shape[1]),
                         against="prompts.tokens rows")
  validation.check_shape("response_mask", response_mask, response.shape, against="response")


@jax.jit
def _demonstration(target: Array, target_len: Array) -> Array:
  """[n, L] targets and [n] lengths -> [n, L + 1] demonstrations (target, EOS, PAD)."""
  demo = fit_width(target, target.shape[1] + 1)
  pos = jnp.arange(demo.shape[1])[None, :]
  return jnp.where(pos == target_len[:, None], vocab.EOS, demo).astype(jnp.int32)
