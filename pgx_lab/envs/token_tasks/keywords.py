"""Keyword coverage: say every keyword of the prompt.

Prompt:  BOS <keywords> w_1 ... w_k SEP    (k + 3 tokens; k distinct letters drawn uniformly)
Demonstration:  w_1 ... w_k EOS.

The reward is computed on the parsed answer (tokens before EOS, see `base`):
  coverage = #{j : w_j occurs in the answer} / k;
  "partial": the coverage;  "exact": 1 if every keyword occurs (coverage = 1), else 0.
Order and repeats do not matter. `max_extra_tokens` (default 0) guards against the trivial policy
that lists every letter: an answer longer than k + max_extra_tokens gets reward 0. With the default
an "exact" reward of 1 means the answer is a permutation of the keywords; None removes the guard.
This is the constrained-generation ("include these words") reward of CommonGen (Lin et al. 2020)
in miniature.

The difficulty is the number of keywords k in [min_difficulty, max_difficulty] (at most 16, the
number of letters); the class id is k - min_difficulty.
"""

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from pgx_lab.envs.token_tasks import base
from pgx_lab.envs.token_tasks import prompts as prompts_lib
from pgx_lab.envs.token_tasks import vocab

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class KeywordTask(base.TokenTask):
  """Keyword coverage (see the module docstring)."""

  min_difficulty: int = 1
  max_difficulty: int = 4
  max_extra_tokens: Optional[int] = 0

  name = "keywords"

  def __post_init__(self):
    super().__post_init__()
    extra = self.max_extra_tokens
    if extra is not None and (not prompts_lib.is_int(extra) or extra < 0):
      raise ValueError(f"`max_extra_tokens` must be None or an int >= 0, got {extra!r}.")

  def _max_level(self):
    return vocab.NUM_LETTERS

  @property
  def prompt_len(self) -> int:
    return self.max_difficulty + 3

  @property
  def answer_len(self) -> int:
    return self.max_difficulty

  def _sample(self, key, difficulty):
    n, width = difficulty.shape[0], self.max_difficulty
    # k distinct letters: the first k of a uniformly random permutation of the 16 letters.
    perm = jnp.argsort(jax.random.uniform(key, (n, vocab.NUM_LETTERS)), axis=1)[:, :width]
    pos = jnp.arange(width)[None, :]
    words = jnp.where(pos < difficulty[:, None], perm + vocab.LETTER_A, vocab.PAD)
    head = jnp.broadcast_to(jnp.array([vocab.BOS, vocab.TASK_KEYWORDS], jnp.int32), (n, 2))
    content = jnp.concatenate([head, words.astype(jnp.int32),
                               jnp.full((n, 1), vocab.PAD, jnp.int32)], axis=1)
    cpos = jnp.arange(content.shape[1])[None, :]
    content = jnp.where(cpos == difficulty[:, None] + 2, vocab.SEP, content)
    return content, difficulty + 3, words.astype(jnp.int32), difficulty

  def coverage(self, prompts: prompts_lib.Prompts, answer: Array, answer_len: Array) -> Array:
    """[n] fraction of each prompt's keywords present in the parsed answer [n, S] (no length
    guard). answer_len is unused beyond the parsing (answers hold PAD after their end)."""
    del answer_len
    kw_valid = jnp.arange(prompts.target.shape[1])[None, :] < prompts.target_len[:, None]
    present = jnp.any(prompts.target[:, :, None] == answer[:, None, :], axis=2)
    hits = jnp.sum(jnp.logical_and(present, kw_valid), axis=1)
    return hits.astype(jnp.float32) / jnp.maximum(prompts.target_len, 1).astype(jnp.float32)

  def _score(self, prompts, answer, answer_len):
    cov = self.coverage(prompts, answer, answer_len)
    r = cov if self.reward_type == "partial" else (cov >= 1.0).astype(jnp.float32)
    if self.max_extra_tokens is not None:
      r = jnp.where(answer_len > prompts.target_len + self.max_extra_tokens, 0.0, r)
    return r
