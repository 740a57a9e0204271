"""Fitting A-LoL's value head V_ref(x) on a frozen reference model's prompt hidden states.

Baheti et al., ICLR 2024, "Leftover Lunch: Advantage-based Offline Reinforcement Learning for
Language Models", and `train_value_function_on_val_predictions` in the authors' code
(abaheti95/LoL-RL): the reference pi_ref (the SFT model) generates greedily for held-out prompts,
the rewards of those outputs are the targets, and an attention-pooling head over pi_ref's frozen
last-layer prompt hidden states is trained by MSE (AdamW, 10 epochs), keeping the epoch with the
lowest MSE. Then A_i = R(x_i, y_i) - V_ref(x_i) on the training set, computed once.

`prompt_hidden_states` reads the final-LayerNorm output of the frozen model with
`models.transformer.apply_with_hidden`.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pgx_lab import validation
from pgx_lab.models import transformer
from pgx_lab.models.value_head import AttentionValueHead
from pgx_lab.rollout import sequences

Array = jax.Array


def prompt_hidden_states(params, config: transformer.TransformerConfig, tokens: Array,
                         attention_mask: Array) -> Array:
  """[B, T, D] last-layer (after the final LayerNorm) hidden states of the frozen model.

  Args:
    params, config: the reference transformer.
    tokens: [B, T] int prompt ids (left-padded).
    attention_mask: [B, T], 1 for real tokens.
  """
  transformer.check_config(config)
  transformer.check_tokens("tokens", tokens, config)
  validation.check_array("attention_mask", attention_mask, ndim=2, kind="number")
  validation.check_shape("attention_mask", attention_mask, tokens.shape, against="tokens")
  return transformer.apply_with_hidden(jax.lax.stop_gradient(params), config, tokens,
                                       attention_mask)[2]


def greedy_value_targets(key: Array, params, config: transformer.TransformerConfig, task: Any,
                         prompts) -> Array:
  """[n] rewards of the reference's greedy responses to `prompts` (the value head's targets).

  Args:
    key: PRNG key (greedy decoding does not use it; kept for the sampler's signature).
    params, config: the reference transformer.
    task: a token task (`pgx_lab.envs.token_tasks.make_task`), which scores the responses.
    prompts: n held-out `Prompts` of that task.
  """
  batch, _ = sequences.sample_groups(key, params, config, task, prompts, group_size=1,
                                     temperature=0.0)
  return batch.rewards


class ValueFit(NamedTuple):
  """What `fit_value_head` returns.

  Attributes:
    params: the head's parameters at the best epoch.
    best_epoch: int, 1-based epoch with the lowest MSE (0: the initial head was best).
    mse: [epochs + 1] MSE on the fitting set before training and after each epoch.
  """

  params: Any
  best_epoch: Array
  mse: Array


def _check_fit_inputs(hidden, mask, targets):
  validation.check_array("hidden", hidden, ndim=3)
  validation.check_array("mask", mask, ndim=2, kind="number")
  validation.check_shape("mask", mask, hidden.shape[:2], against="hidden[:, :, 0]")
  validation.check_array("targets", targets, ndim=1)
  validation.check_shape("targets", targets, hidden.shape[:1], against="hidden rows")


def fit_value_head(key: Array, hidden: Array, mask: Array, targets: Array, *,
                   num_heads: int = 4, max_value: float = 1.0, epochs: int = 10,
                   batch_size: int = 32, learning_rate: float = 1e-3,
                   weight_decay: float = 0.0) -> ValueFit:
  """Trains `AttentionValueHead` by MSE on (hidden, mask) -> targets; one jitted `lax.scan`.

  Args:
    key: PRNG key (initialisation and the per-epoch shuffles).
    hidden: [n, T, D] frozen prompt hidden states (`prompt_hidden_states`).
    mask: [n, T], 1 for real prompt tokens.
    targets: [n] rewards in [0, max_value] (`greedy_value_targets`).
    num_heads, max_value: the head's attributes.
    epochs: passes over the data (the paper: 10).
    batch_size: minibatch size; the n % batch_size points left over are skipped in an epoch
      (a different remainder each epoch). Must be <= n.
    learning_rate, weight_decay: AdamW's (the paper: 1e-5 on a 7B model's states).
  """
  _check_fit_inputs(hidden, mask, targets)
  n = hidden.shape[0]
  for name, v in (("epochs", epochs), ("batch_size", batch_size)):
    if not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"`{name}` must be a positive int, got {v!r}.")
  if batch_size > n:
    raise ValueError(f"`batch_size` ({batch_size}) must be <= the number of points ({n}).")
  validation.check_positive("learning_rate", learning_rate)
  head = AttentionValueHead(num_heads=num_heads, max_value=max_value)
  return _fit(key, hidden, mask.astype(jnp.float32), targets.astype(jnp.float32), head, epochs,
              batch_size, float(learning_rate), float(weight_decay))


def _fit(key, hidden, mask, targets, head, epochs, batch_size, lr, wd):
  opt = optax.adamw(lr, weight_decay=wd)
  n = hidden.shape[0]
  steps = n // batch_size

  def mse(p, h, m, y):
    return jnp.mean((head.apply({"params": p}, h, m) - y) ** 2)

  def run(key):
    k_init, k_shuffle = jax.random.split(key)
    params = head.init(k_init, hidden[:1], mask[:1])["params"]

    def step(carry, idx):
      p, s = carry
      g = jax.grad(mse)(p, hidden[idx], mask[idx], targets[idx])
      u, s = opt.update(g, s, p)
      return (optax.apply_updates(p, u), s), None

    def epoch(carry, k):
      p, s, best_p, best_mse, best_ep, ep = carry
      order = jax.random.permutation(k, n)[: steps * batch_size].reshape(steps, batch_size)
      (p, s), _ = jax.lax.scan(step, (p, s), order)
      m = mse(p, hidden, mask, targets)
      better = m < best_mse
      best_p = jax.tree.map(lambda a, b: jnp.where(better, a, b), p, best_p)
      return (p, s, best_p, jnp.where(better, m, best_mse), jnp.where(better, ep + 1, best_ep),
              ep + 1), m

    m0 = mse(params, hidden, mask, targets)
    carry = (params, opt.init(params), params, m0, jnp.int32(0), jnp.int32(0))
    carry, history = jax.lax.scan(epoch, carry, jax.random.split(k_shuffle, epochs))
    return ValueFit(carry[2], carry[4], jnp.concatenate([m0[None], history]))

  return jax.jit(run)(key)


def predict(head_params, hidden: Array, mask: Array, *, num_heads: int = 4,
            max_value: float = 1.0) -> Array:
  """[n] V_ref(x) from a fitted head. Args as in `fit_value_head`."""
  validation.check_array("hidden", hidden, ndim=3)
  head = AttentionValueHead(num_heads=num_heads, max_value=max_value)
  return head.apply({"params": head_params}, hidden, mask)


def advantages(rewards: Array, values: Array) -> Array:
  """A_i = R(x_i, y_i) - V_ref(x_i), [N] (A-LoL). rewards, values: [N] float."""
  validation.check_array("rewards", rewards, ndim=1)
  validation.check_array("values", values, ndim=1)
  validation.check_shape("values", values, rewards.shape, against="rewards")
  return rewards - values
