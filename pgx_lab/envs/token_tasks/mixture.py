"""A mixture of token tasks: one batch, one model, several tasks told apart by their marker token.

Each prompt's task is drawn uniformly (or with `weights`); prompts are left-padded to the widest
task's prompt width and targets right-padded to the widest answer. Class ids are laid out task by
task: the classes of task t are `class_offsets[t] + (its own class id)`, so
`num_classes = sum of the sub-tasks' num_classes`, and `task_index(prompts)` recovers the task.
Rewards and demonstrations are each row's own task's.
"""

import dataclasses
import functools
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from pgx_lab.envs.token_tasks import base
from pgx_lab.envs.token_tasks import prompts as prompts_lib
from pgx_lab.envs.token_tasks import vocab

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class MixtureTask:
  """Several `TokenTask`s in one batch (see the module docstring).

  Attributes:
    tasks: the sub-tasks (distinct names).
    weights: None (uniform) or one positive weight per task (normalised).
  """

  tasks: Tuple[base.TokenTask, ...]
  weights: Optional[Tuple[float, ...]] = None

  name = "mixture"

  def __post_init__(self):
    if not self.tasks or not all(isinstance(t, base.TokenTask) for t in self.tasks):
      raise ValueError(f"`tasks` must be a non-empty tuple of TokenTask, got {self.tasks!r}.")
    names = [t.name for t in self.tasks]
    if len(set(names)) != len(names):
      raise ValueError(f"`tasks` must have distinct names, got {names}.")
    if self.weights is not None:
      w = np.asarray(self.weights, np.float64)
      if w.shape != (len(self.tasks),) or np.any(~np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"`weights` must be {len(self.tasks)} positive numbers, got "
                         f"{self.weights!r}.")

  @property
  def prompt_len(self) -> int:
    return max(t.prompt_len for t in self.tasks)

  @property
  def answer_len(self) -> int:
    return max(t.answer_len for t in self.tasks)

  @property
  def response_len(self) -> int:
    return self.answer_len + 1

  @property
  def class_offsets(self) -> Tuple[int, ...]:
    return tuple(int(x) for x in np.cumsum([0] + [t.num_classes for t in self.tasks])[:-1])

  @property
  def num_classes(self) -> int:
    return sum(t.num_classes for t in self.tasks)

  @property
  def vocab_size(self) -> int:
    return vocab.VOCAB_SIZE

  def task_index(self, prompts: prompts_lib.Prompts) -> Array:
    """[n] int32 index into `tasks` of each prompt (from its class id)."""
    offsets = jnp.asarray(self.class_offsets[1:], jnp.int32)
    return jnp.sum(prompts.class_id[:, None] >= offsets[None, :], axis=1).astype(jnp.int32)

  def sample_prompts(self, key: Array, n: int, difficulty: prompts_lib.Difficulty = None
                     ) -> prompts_lib.Prompts:
    """n prompts of mixed tasks; `difficulty` (None, int or [n]) is passed to every sub-task
    and must be valid for each. Returns `Prompts` of width `prompt_len`."""
    if not prompts_lib.is_int(n) or n < 1:
      raise ValueError(f"`n` must be a positive int, got {n!r}.")
    return self._sample_prompts(key, int(n), self.check_difficulty(n, difficulty))

  def check_difficulty(self, n: int, difficulty: prompts_lib.Difficulty) -> Optional[Array]:
    """`TokenTask.check_difficulty` of every sub-task (the level must be valid for each)."""
    return [t.check_difficulty(n, difficulty) for t in self.tasks][0]

  @functools.partial(jax.jit, static_argnums=(0, 2))
  def _sample_prompts(self, key, n, difficulty):
    k_task, *k_sub = jax.random.split(key, len(self.tasks) + 1)
    logits = jnp.zeros(len(self.tasks)) if self.weights is None else jnp.log(
        jnp.asarray(self.weights, jnp.float32))
    which = jax.random.categorical(k_task, logits, shape=(n,))
    out = None
    for t, (task, k) in enumerate(zip(self.tasks, k_sub)):
      p = task._sample_prompts(k, n, difficulty)  # pylint: disable=protected-access
      extra = self.prompt_len - task.prompt_len
      p = p.replace(tokens=jnp.pad(p.tokens, ((0, 0), (extra, 0))),
                    mask=jnp.pad(p.mask, ((0, 0), (extra, 0))),
                    target=prompts_lib.fit_width(p.target, self.answer_len),
                    class_id=p.class_id + self.class_offsets[t])
      if out is None:
        out = p
      else:
        pick = lambda new, old: jnp.where((which == t).reshape((n,) + (1,) * (new.ndim - 1)),
                                          new, old)
        out = jax.tree.map(pick, p, out)
    return out

  def reward(self, prompts: prompts_lib.Prompts, response: Array, response_mask: Array) -> Array:
    """[n] float32: each row scored by its own task's `reward` (arguments as there)."""
    base.check_reward_args(prompts, response, response_mask)
    return self._reward(prompts, response, response_mask)

  @functools.partial(jax.jit, static_argnums=0)
  def _reward(self, prompts, response, response_mask):
    which = self.task_index(prompts)
    rewards = [t._reward(prompts, response, response_mask)  # pylint: disable=protected-access
               for t in self.tasks]
    return jnp.select([which == i for i in range(len(self.tasks))], rewards)

  def demonstration(self, prompts: prompts_lib.Prompts) -> Array:
    """[n, answer_len + 1] int32: the target followed by EOS (the same for every sub-task)."""
    return self.tasks[0].demonstration(prompts)
