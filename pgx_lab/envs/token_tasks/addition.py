"""Multi-digit addition a + b with carries.

Prompt:  BOS <add> a_1 ... a_D + b_1 ... b_D =     (2D + 4 tokens, most significant digit first)
Answer:  the digits of a + b (D or D + 1 of them, no leading zeros), then EOS.

`reverse_answer=True` (the default) writes the answer least significant digit first, the order in
which carries are computed left to right; Lee et al. 2024 ("Teaching Arithmetic to Small
Transformers", ICLR) show that small transformers learn this reversed format far faster.
With `reverse_answer=False` the answer is written in the usual order.

The difficulty is the number of digits D of both operands, in [min_difficulty, max_difficulty];
a and b are drawn uniformly from [10^(D-1), 10^D) (from [0, 10) when D = 1). The class id is
D - min_difficulty. The sum is computed digit by digit, so any D works (no integer overflow).
"""

import dataclasses

import jax
import jax.numpy as jnp

from pgx_lab.envs.token_tasks import base
from pgx_lab.envs.token_tasks import prompts as prompts_lib
from pgx_lab.envs.token_tasks import vocab

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class AdditionTask(base.TokenTask):
  """a + b with D-digit operands (see the module docstring)."""

  min_difficulty: int = 1
  max_difficulty: int = 3
  reverse_answer: bool = True

  name = "addition"

  @property
  def prompt_len(self) -> int:
    return 2 * self.max_difficulty + 4

  @property
  def answer_len(self) -> int:
    return self.max_difficulty + 1

  def _sample(self, key, difficulty):
    k_ops, k_lead = jax.random.split(key)
    n, width = difficulty.shape[0], self.max_difficulty
    ops = jax.random.randint(k_ops, (2, n, width), 0, 10, jnp.int32)
    lead = jax.random.randint(k_lead, (2, n, 1), 1, 10, jnp.int32)
    pos = jnp.arange(width)[None, :]
    ops = jnp.where((pos == difficulty[:, None] - 1) & (difficulty[:, None] > 1), lead, ops)
    ops = jnp.where(pos < difficulty[:, None], ops, 0)
    a, b = ops[0], ops[1]

    # Schoolbook addition, least significant digit first (a short static loop over columns).
    carry, columns = jnp.zeros((n,), jnp.int32), []
    for i in range(width + 1):
      s = carry + (a[:, i] + b[:, i] if i < width else 0)
      carry = s // 10
      columns.append(s % 10)
    sum_digits = jnp.stack(columns, axis=1)                      # [n, Dmax + 1], lsb first
    sum_len = difficulty + (jnp.take_along_axis(sum_digits, difficulty[:, None], 1)[:, 0] > 0)
    tpos = jnp.arange(width + 1)[None, :]
    tvalid = tpos < sum_len[:, None]
    idx = tpos if self.reverse_answer else sum_len[:, None] - 1 - tpos
    target = prompts_lib.take(sum_digits + vocab.DIGIT_0, idx, tvalid)

    # Prompt columns: 0 BOS, 1 <add>, [2, D+2) a msb first, D+2 "+", [D+3, 2D+3) b, 2D+3 "=".
    c = jnp.arange(self.prompt_len)[None, :]
    dd = difficulty[:, None]
    a_tok = prompts_lib.take(a + vocab.DIGIT_0, dd - 1 - (c - 2), (c >= 2) & (c < dd + 2))
    b_tok = prompts_lib.take(b + vocab.DIGIT_0, dd - 1 - (c - dd - 3),
                             (c >= dd + 3) & (c < 2 * dd + 3))
    content = jnp.select(
        [c == 0, c == 1, c == dd + 2, c == 2 * dd + 3, c < dd + 2],
        [vocab.BOS, vocab.TASK_ADD, vocab.PLUS, vocab.EQUALS, a_tok], b_tok)
    return content.astype(jnp.int32), 2 * difficulty + 4, target, sum_len
