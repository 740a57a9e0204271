"""HPT, Hybrid Post-Training (Lv et al. 2025, "Towards a Unified View of Large Language Model
Post-Training", arXiv 2509.04419, Algorithm 1 and eq. 10-13): per prompt, RL or SFT.

For each prompt (group) g with n_g sampled rollouts and verifier rewards v in {0, 1}, let
s_g = # solved rollouts and P_g = s_g / n_g. HPT weighs the two losses per prompt,

    L = sum_g alpha_g * L_RL(g) + sft_loss_coef * sum_g beta_g * L_SFT(g),

with the default hard switch (Algorithm 1; the reference code's `switch_gate` counts solved
rollouts, `select_on_off_ada_balance` in TsinghuaC3I/Unify-Post-Training
hpt/verl/verl/mix_src/mix_trainer.py):

    (alpha_g, beta_g) = (1, 0) if s_g > gate else (0, 1)        (gate = 0 for Qwen, 2 for LLaMA).

A prompt on SFT has its on-policy rollouts removed and its one demonstration added. Normalisation
follows the reference actor (mix_actor.py): the RL term is the estimator's token mean over the
rollout tokens that are kept (alpha_g > 0), the SFT term `compute_sft_pure_loss` = token-mean
NLL over the demonstration tokens that are kept (beta_g > 0), and loss = pg_loss +
sft_loss_coef * sft_loss. With a soft mix the per-prompt weights multiply the token terms inside
those two token means (the means still count the kept tokens once), so the hard switch is the
special case with weights in {0, 1}.

Everything is arrays and masks: the switch is `jnp.where` on per-group counts (segment sums), so
both branches live in one compiled step and no Python branch depends on the data.

The RL loss is any `Estimator` (default `presets.grpo("bnpo")`: GRPO's group-normalised advantage,
PPO's token clip 0.2, token mean, no KL, as in the reference code's `adv_estimator=grpo` with
verl's token-mean pg loss; the paper's text names Dr. GRPO, which is `presets.grpo("dr_grpo")`).
The soft weights are applied by scaling the advantage by alpha_g >= 0: PPO's clipped surrogate
min(r A, clip(r) A) is positively homogeneous in A, so this equals alpha_g times the per-token loss
(penalties such as a KL term, if the estimator has any, are not scaled).
"""

from typing import Callable, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from pgx_lab import types
from pgx_lab import validation
from pgx_lab.estimators import presets
from pgx_lab.estimators.estimator import Estimator
from pgx_lab.estimators.estimator import check_sequence_batch

Array = jax.Array
sg = jax.lax.stop_gradient

MODES = ("switch", "linear")


def group_counts(rewards: Array, group_ids: Array, mask: Array, num_groups: int,
                 success_threshold: float = 1.0) -> Tuple[Array, Array]:
  """Per-group (solved, rollouts) counts.

  Args:
    rewards: [B] verifier rewards.
    group_ids: [B] int group (prompt) ids in [0, num_groups).
    mask: [B, T] response mask; rows with no response token are not rollouts.
    num_groups: G, a static int.
    success_threshold: a rollout is solved when its reward >= this (1.0: verifier reward 1).

  Returns:
    solved [G] and rollouts [G], float32.
  """
  valid = (jnp.sum(mask, axis=1) > 0).astype(jnp.float32)
  solved = (rewards >= success_threshold).astype(jnp.float32) * valid
  seg = lambda x: jax.ops.segment_sum(x, group_ids, num_segments=num_groups)
  return seg(solved), seg(valid)


def gate_weights(solved: Array, rollouts: Array, mode: Union[str, Callable] = "switch",
                 gate: float = 0.0) -> Tuple[Array, Array]:
  """HPT's per-prompt weights (alpha [G], beta [G]) (eq. 10-13).

  Args:
    solved: [G] number of solved rollouts of each prompt.
    rollouts: [G] number of rollouts of each prompt.
    mode: "switch": (1, 0) if solved > gate else (0, 1) (Algorithm 1, `switch_gate`);
      "linear": (P, 1 - P) with P = solved / rollouts (the soft mix alpha = f(P), beta = g(P)
      with linear f, g; our choice of f and g, the paper leaves them general);
      or a callable P [G] -> (alpha [G], beta [G]) for any other f, g (values must be >= 0).
    gate: the switch gate in solved rollouts (0: SFT only when every rollout fails).

  Returns:
    alpha [G], beta [G] float32.
  """
  if callable(mode):
    p = solved / jnp.maximum(rollouts, 1.0)
    alpha, beta = mode(p)
    return jnp.asarray(alpha, jnp.float32), jnp.asarray(beta, jnp.float32)
  if mode == "switch":
    rl = (solved > gate).astype(jnp.float32)
    return rl, 1.0 - rl
  p = solved / jnp.maximum(rollouts, 1.0)
  return p, 1.0 - p


def _is_number(x) -> bool:
  return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _check(logp, batch, demo_logp, demo_mask, mode, gate, sft_loss_coef, rl_estimator):
  check_sequence_batch(logp, batch)
  validation.require("batch.rewards", batch.rewards, "hpt_loss")
  validation.require("batch.group_ids", batch.group_ids, "hpt_loss")
  validation.require("batch.old_logp", batch.old_logp, "hpt_loss")
  if batch.rewards.ndim != 1:
    raise ValueError(f"`batch.rewards` must be [B] sequence rewards, got shape "
                     f"{tuple(batch.rewards.shape)}.")
  validation.check_array("demo_logp", demo_logp, ndim=2)
  validation.check_array("demo_mask", demo_mask, ndim=2, kind="number")
  validation.check_shape("demo_mask", demo_mask, demo_logp.shape, against="demo_logp")
  if not (callable(mode) or mode in MODES):
    raise ValueError(f"unknown `mode` {mode!r}; expected one of {MODES} or a callable.")
  if not _is_number(gate) or gate < 0:
    raise ValueError(f"`gate` must be a number >= 0 (solved rollouts), got {gate!r}.")
  if not _is_number(sft_loss_coef) or sft_loss_coef < 0:
    raise ValueError(f"`sft_loss_coef` must be a number >= 0, got {sft_loss_coef!r}.")
  if rl_estimator is not None and not isinstance(rl_estimator, Estimator):
    raise ValueError(f"`rl_estimator` must be an Estimator, got {type(rl_estimator).__name__}.")


def hpt_loss(logp: Array, batch: types.SequenceBatch, demo_logp: Array, demo_mask: Array, *,
             gate: float = 0.0, sft_loss_coef: float = 1.0,
             mode: Union[str, Callable] = "switch", rl_estimator: Optional[Estimator] = None,
             success_threshold: float = 1.0) -> Tuple[Array, types.Metrics]:
  """HPT's loss (module docstring): RL on prompts that some rollout solves, SFT on the others.

  Args:
    logp: [B, T] differentiable log-probs of the rollout tokens under the current policy.
    batch: `SequenceBatch` of the rollouts: mask [B, T], old_logp [B, T], rewards [B] verifier
      rewards, group_ids [B] int in [0, G) (the prompt of each rollout; ids outside are dropped).
    demo_logp: [G, Td] differentiable log-probs of demonstration g's tokens (one per prompt,
      row g for group id g); -inf at padding is fine.
    demo_mask: [G, Td] 1 on demonstration tokens.
    gate: switch gate in solved rollouts ("switch" mode): RL when solved > gate.
    sft_loss_coef: weight of the SFT term (1.0; 0.3 for Qwen2.5-Math-1.5B in the paper's code).
    mode: "switch" (default), "linear" soft mix, or a callable P -> (alpha, beta) (`gate_weights`).
    rl_estimator: the RL loss; None is `presets.grpo("bnpo")` (token mean, clip 0.2, no KL).
    success_threshold: reward at or above which a rollout counts as solved.

  Returns:
    loss (scalar) and metrics: "sft_fraction" (share of prompts with beta > 0), "rl_loss",
    "sft_loss", "alpha_mean", "solved_mean", and the RL estimator's metrics prefixed "rl/".
  """
  _check(logp, batch, demo_logp, demo_mask, mode, gate, sft_loss_coef, rl_estimator)
  est = rl_estimator if rl_estimator is not None else presets.grpo("bnpo")
  num_groups = demo_logp.shape[0]
  mask = batch.mask.astype(logp.dtype)
  solved, rollouts = group_counts(batch.rewards, batch.group_ids, mask, num_groups,
                                  success_threshold)
  alpha, beta = gate_weights(solved, rollouts, mode, gate)
  alpha, beta = sg(alpha).astype(logp.dtype), sg(beta).astype(logp.dtype)

  # RL part: rollouts of prompts with alpha = 0 are removed (masked out), the rest weighted.
  in_range = (batch.group_ids >= 0) & (batch.group_ids < num_groups)
  row_alpha = jnp.where(in_range, alpha[jnp.clip(batch.group_ids, 0, num_groups - 1)], 0.0)
  keep = (row_alpha > 0).astype(logp.dtype)
  base_adv = est.advantage

  def weighted_advantage(b):
    a = base_adv(b)
    return a * (row_alpha if a.ndim == 1 else row_alpha[:, None])

  rl_batch = batch.replace(mask=mask * keep[:, None])
  rl_loss, rl_metrics = est.replace(advantage=weighted_advantage)(logp, rl_batch)
  has_rl = jnp.sum(rl_batch.mask) > 0
  rl_loss = jnp.where(has_rl, rl_loss, 0.0)

  # SFT part: token-mean NLL over the demonstrations of prompts with beta > 0.
  dmask = demo_mask.astype(demo_logp.dtype) * (beta > 0).astype(demo_logp.dtype)[:, None]
  nll = -jnp.where(dmask > 0, demo_logp, 0.0)
  sft_loss = jnp.sum(nll * dmask * beta[:, None]) / jnp.maximum(jnp.sum(dmask), 1.0)

  loss = rl_loss + sft_loss_coef * sft_loss
  present = (rollouts > 0).astype(jnp.float32)
  n_present = jnp.maximum(jnp.sum(present), 1.0)
  metrics = {f"rl/{k}": v for k, v in rl_metrics.items()}
  metrics.update({
      "sft_fraction": jnp.sum((beta > 0) * present) / n_present,
      "rl_loss": sg(rl_loss), "sft_loss": sg(sft_loss),
      "alpha_mean": jnp.sum(alpha * present) / n_present,
      "solved_mean": jnp.sum(solved * present) / n_present,
  })
  return loss, metrics
