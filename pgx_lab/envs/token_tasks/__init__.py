"""Token tasks with verifiable rewards over one small shared vocabulary (see `vocab`).

    task = make_task("addition", max_difficulty=3)
    prompts = task.sample_prompts(key, n=64)            # Prompts: tokens [n, P] left-padded, ...
    demo = task.demonstration(prompts)                  # [n, L + 1] correct answers + EOS (SFT)
    r = task.reward(prompts, response, response_mask)   # [n] exact match 1/0 (or partial credit)
    prompts_g, group_ids = repeat_for_groups(prompts, 8)

Tasks: "copy", "reverse", "sort" (`transduction`), "addition", "keywords", and "mixture" of any
of them (`tasks=("copy", "addition")`). Every task is a frozen dataclass: hashable, so it can be a
static argument of `jax.jit`, and its methods jit and vmap.
"""

from pgx_lab.envs.token_tasks import vocab
from pgx_lab.envs.token_tasks.addition import AdditionTask
from pgx_lab.envs.token_tasks.base import TokenTask
from pgx_lab.envs.token_tasks.base import extract_answer
from pgx_lab.envs.token_tasks.prompts import Prompts
from pgx_lab.envs.token_tasks.prompts import repeat_for_groups
from pgx_lab.envs.token_tasks.keywords import KeywordTask
from pgx_lab.envs.token_tasks.mixture import MixtureTask
from pgx_lab.envs.token_tasks.transduction import CopyTask
from pgx_lab.envs.token_tasks.transduction import ReverseTask
from pgx_lab.envs.token_tasks.transduction import SortTask

TASKS = {"copy": CopyTask, "reverse": ReverseTask, "sort": SortTask,
         "addition": AdditionTask, "keywords": KeywordTask, "mixture": MixtureTask}


def make_task(name: str, **kwargs):
  """Builds a task by name.

  Args:
    name: one of `TASKS` ("copy", "reverse", "sort", "addition", "keywords", "mixture").
    **kwargs: the task's fields, e.g. min_difficulty, max_difficulty, reward_type ("exact" or
      "partial"), num_symbols (copy/reverse/sort), reverse_answer (addition),
      max_extra_tokens (keywords). For "mixture": tasks, a sequence of names or task objects
      (names are built with default fields), and optional weights.

  Raises:
    ValueError: an unknown `name` (the message lists the known ones) or an invalid field.
  """
  if not isinstance(name, str) or name not in TASKS:
    raise ValueError(f"unknown task name {name!r}; known tasks: {sorted(TASKS)}.")
  if name == "mixture":
    subs = kwargs.pop("tasks", None)
    if subs is None or isinstance(subs, str):
      raise ValueError(f"`tasks` must be a sequence of task names or tasks, got {subs!r}.")
    built = []
    for t in subs:
      if t == "mixture":
        raise ValueError("`tasks` of a mixture cannot contain 'mixture'.")
      built.append(make_task(t) if isinstance(t, str) else t)
    weights = kwargs.pop("weights", None)
    kwargs["tasks"] = tuple(built)
    kwargs["weights"] = None if weights is None else tuple(float(w) for w in weights)
  try:
    return TASKS[name](**kwargs)
  except TypeError as e:  # an unknown keyword argument
    raise ValueError(f"invalid arguments for task {name!r}: {e}") from None


__all__ = ["AdditionTask", "CopyTask", "KeywordTask", "MixtureTask", "Prompts", "ReverseTask",
           "SortTask", "TASKS", "TokenTask", "extract_answer", "make_task", "repeat_for_groups",
           "vocab"]
