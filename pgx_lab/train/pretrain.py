"""Supervised pretraining to an intermediate success rate: the starting policy of RL experiments.

Teacher forcing on demonstrations (the correct answer followed by EOS, `task.demonstration`):
each step draws `batch_size` fresh prompts and minimises the token-mean negative log-likelihood of
the demonstration tokens given the prompt, with Adam (Kingma & Ba 2015, optax). `eval_every`
steps run as one jitted `lax.scan`. RL from a pretrained (SFT) policy is the standard recipe
(Ouyang et al. 2022); stopping the SFT early leaves room for RL to improve: neither 0 (no reward
signal, every GRPO group is all zeros) nor ~1 (nothing to learn).

Stopping rule. The success rate is the mean exact-match reward of responses sampled at
temperature 1 (no top-k/top-p), one response to each of `eval_size` fresh prompts, i.e. the
expected reward of the policy that RL starts from (not the greedy accuracy, which is higher).
It is measured before training and every `eval_every` steps; training stops at the first
measurement inside the closed band `target_success = (low, high)`. With eval_size = 512 the
standard error is at most 0.022, so the true rate may sit slightly outside the band. If no
measurement falls in the band within `max_steps` (too few steps, or the rate jumped over the band
between two measurements: lower `lr` or `eval_every`), `pretrain` raises `PretrainError`, or
returns with `history["reached"] = False` when `on_failure="return"`.
"""

import dataclasses
import functools
import time
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pgx_lab.envs.token_tasks import prompts as prompts_lib
from pgx_lab.envs.token_tasks import vocab
from pgx_lab.envs.token_tasks.mixture import MixtureTask
from pgx_lab.models import transformer
from pgx_lab.rollout import sequences

Array = jax.Array


class PretrainError(RuntimeError):
  """The success rate did not enter the target band within max_steps (see `history`)."""

  def __init__(self, message: str, params: Any, history: Dict[str, Any]):
    super().__init__(message)
    self.params = params
    self.history = history


def exact_task(task: Any) -> Any:
  """The same task with exact-match rewards (the success criterion), whatever its reward_type."""
  if isinstance(task, MixtureTask):
    return dataclasses.replace(task, tasks=tuple(exact_task(t) for t in task.tasks))
  return dataclasses.replace(task, reward_type="exact")


def sft_loss(params: Any, config: transformer.TransformerConfig, prompts: prompts_lib.Prompts,
             demo: Array) -> Array:
  """Token-mean negative log-likelihood of demonstrations (teacher forcing).

  Args:
    params, config: the transformer.
    prompts: n `Prompts` (tokens [n, P] left-padded).
    demo: [n, L + 1] int32 demonstrations (answer, EOS, then PAD; PAD is not trained on).
  """
  demo_mask = (demo != vocab.PAD).astype(jnp.int32)
  tokens = jnp.concatenate([prompts.tokens, demo], axis=1)
  mask = jnp.concatenate([prompts.mask.astype(jnp.int32), demo_mask], axis=1)
  logp, _ = sequences.response_logp(params, config, tokens, prompts.tokens.shape[1], mask)
  w = demo_mask.astype(logp.dtype)
  return -jnp.sum(logp * w) / jnp.maximum(jnp.sum(w), 1.0)


def _check(task, config, target_success, max_steps, batch_size, lr, eval_every, eval_size,
           on_failure):
  for name in ("sample_prompts", "reward", "demonstration", "prompt_len", "response_len"):
    if not hasattr(task, name):
      raise ValueError(f"`task` must be a token task (make_task), got {type(task).__name__}.")
  transformer.check_config(config)
  if config.vocab_size < vocab.VOCAB_SIZE:
    raise ValueError(f"`config.vocab_size` must be >= {vocab.VOCAB_SIZE}, the task vocabulary, "
                     f"got {config.vocab_size}.")
  need = task.prompt_len + task.response_len
  if config.max_len < need:
    raise ValueError(f"`config.max_len` must be >= prompt_len + response_len = {need}, got "
                     f"{config.max_len}.")
  lo_hi = tuple(target_success) if hasattr(target_success, "__len__") else ()
  if len(lo_hi) != 2 or not 0.0 <= lo_hi[0] <= lo_hi[1] <= 1.0:
    raise ValueError(f"`target_success` must be (low, high) with 0 <= low <= high <= 1, got "
                     f"{target_success!r}.")
  for name, v in (("max_steps", max_steps), ("batch_size", batch_size),
                  ("eval_every", eval_every), ("eval_size", eval_size)):
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
      raise ValueError(f"`{name}` must be a positive int, got {v!r}.")
  if not isinstance(lr, (int, float)) or not lr > 0:
    raise ValueError(f"`lr` must be a positive number, got {lr!r}.")
  if on_failure not in ("raise", "return"):
    raise ValueError(f"unknown `on_failure` {on_failure!r}; expected 'raise' or 'return'.")


# Jitted (flax's eager init runs op by op); same values as `transformer.init_params`.
_init_params = jax.jit(transformer.init_params, static_argnums=1)


@functools.partial(jax.jit, static_argnames=("task", "config", "batch_size", "num_steps", "lr"))
def _train_chunk(params, opt_state, key, difficulty, *, task, config, batch_size, num_steps, lr):
  """`num_steps` Adam steps on fresh demonstrations; returns params, opt_state, mean loss.
  Module-level and jitted on static settings, so repeated `pretrain` calls share compilations."""
  opt = optax.adam(lr)

  def train_step(carry, step_key):
    params, opt_state = carry
    prompts = task.sample_prompts(step_key, batch_size, difficulty)
    loss, grads = jax.value_and_grad(sft_loss)(params, config, prompts,
                                               task.demonstration(prompts))
    updates, opt_state = opt.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  (params, opt_state), losses = jax.lax.scan(train_step, (params, opt_state),
                                             jax.random.split(key, num_steps))
  return params, opt_state, jnp.mean(losses)


@functools.partial(jax.jit, static_argnames=("task", "config", "eval_size"))
def _evaluate(params, key, difficulty, *, task, config, eval_size):
  """Sampled (temperature 1) exact-match success rate, overall and per class."""
  k_prompt, k_sample = jax.random.split(key)
  prompts = task.sample_prompts(k_prompt, eval_size, difficulty)
  batch, _ = sequences.sample_groups(k_sample, params, config, exact_task(task), prompts, 1,
                                     temperature=1.0)
  onehot = jax.nn.one_hot(prompts.class_id, task.num_classes)
  per_class = (batch.rewards @ onehot) / jnp.sum(onehot, axis=0)
  return jnp.mean(batch.rewards), per_class


def pretrain(key: Array, task: Any, config: transformer.TransformerConfig, *,
             target_success: Tuple[float, float] = (0.2, 0.6), max_steps: int = 2000,
             batch_size: int = 64, lr: float = 1e-3, eval_every: int = 25, eval_size: int = 512,
             difficulty: prompts_lib.Difficulty = None, params: Optional[Any] = None,
             on_failure: str = "raise", progress: bool = False) -> Tuple[Any, Dict[str, Any]]:
  """Trains `config`'s transformer on `task` demonstrations until the success rate is in band.

  Args:
    key: PRNG key (initialisation, training prompts, evaluation prompts and samples).
    task: a token task from `make_task`.
    config: the `TransformerConfig` (vocab_size >= 37, max_len >= prompt_len + response_len).
    target_success: (low, high), the band of sampled exact-match success rates to stop in.
    max_steps: the most gradient steps.
    batch_size: prompts per step.
    lr: Adam learning rate.
    eval_every: steps between measurements (one jitted scan of that many steps).
    eval_size: prompts per measurement.
    difficulty: `difficulty` of the training and evaluation prompts (None: mixed levels).
    params: initial params (None: `transformer.init_params`).
    on_failure: "raise" (PretrainError, carrying params and history) or "return".
    progress: show a tqdm progress bar.

  Returns:
    params and history: a dict of lists "step", "success", "loss" (mean training loss of the
    preceding chunk; NaN at step 0), "class_success" ([num_classes] per measurement, NaN for an
    absent class), "seconds" (wall time since the start), and "reached" (bool).
  """
  _check(task, config, target_success, max_steps, batch_size, lr, eval_every, eval_size,
         on_failure)
  k_init, k_train, k_eval = jax.random.split(key, 3)
  if params is None:
    params = _init_params(k_init, config)
  levels = task.check_difficulty(batch_size, difficulty)
  eval_levels = task.check_difficulty(eval_size, difficulty)
  opt_state = jax.jit(optax.adam(lr).init)(params)
  static = dict(task=task, config=config)
  low, high = target_success
  history = {"step": [], "success": [], "loss": [], "class_success": [], "seconds": [],
             "reached": False}
  start, step, loss = time.perf_counter(), 0, float("nan")
  bar = None
  if progress:
    import tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm.tqdm(total=max_steps, desc=f"pretrain {task.name}")
  while True:
    success, per_class = _evaluate(params, jax.random.fold_in(k_eval, step), eval_levels,
                                   eval_size=eval_size, **static)
    success = float(success)
    history["step"].append(step)
    history["success"].append(success)
    history["loss"].append(loss)
    history["class_success"].append(np.asarray(per_class))
    history["seconds"].append(time.perf_counter() - start)
    if bar is not None:
      # No training loss exists before the first chunk (history keeps NaN there as "none").
      bar.set_postfix(loss="-" if step == 0 else f"{loss:.3f}", success=f"{success:.3f}")
    if low <= success <= high:
      history["reached"] = True
      break
    if step + eval_every > max_steps or success > high:
      break
    params, opt_state, chunk_loss = _train_chunk(
        params, opt_state, jax.random.fold_in(k_train, step), levels, batch_size=batch_size,
        num_steps=eval_every, lr=float(lr), **static)
    loss = float(chunk_loss)
    step += eval_every
    if bar is not None:
      bar.update(eval_every)
  if bar is not None:
    bar.close()
  if not history["reached"] and on_failure == "raise":
    why = ("it jumped over the band between two measurements (lower lr or eval_every)"
           if success > high else f"max_steps = {max_steps} was not enough")
    raise PretrainError(f"pretraining on {task.name!r} did not reach a success rate in "
                        f"[{low}, {high}]: last {success:.3f} at step {step}; {why}.",
                        params, history)
  return params, history
