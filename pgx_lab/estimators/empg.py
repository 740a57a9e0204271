"""EMPG: Entropy-Modulated Policy Gradients (Wang et al. 2025, arXiv 2509.09265).

For multi-step agents with an outcome reward, every token of step t of trajectory i gets

    A_mod(i, t) = A(i) * g(H~_it) + zeta * f(H~_i,t+1)

where A(i) is the trajectory's outcome advantage (GRPO/DAPO group-normalised) and H~ the step
entropy normalised over the batch:
  * step entropy H_it = mean over the step's (unmasked) tokens of the token entropies under the
    rollout (old) policy [project page pseudocode `compute_empg_advantage`];
  * H~ = (H - min H) / (max H - min H + eps), min and max over every step of every trajectory of
    the batch [paper Eq. 12, eps = 1e-8 in the pseudocode];
  * self-calibrating scale g(H~) = exp(-k H~) / (mean over all batch steps of exp(-k H~) + eps),
    so the batch mean of g is 1 and confident steps get g > 1 [paper Eq. 10];
  * future-clarity bonus f(H~) = exp(-k_f H~) of the NEXT step of the same trajectory [Eq. 11].
    The value for a trajectory's last step is not confirmed; 0 is assumed by default
    (`last_step_bonus`);
  * finally the modulated token advantages are normalised over all response tokens of the batch:
    zero mean ("mean", the reading taken by default) or zero mean and unit std ("mean_std"; the
    paper's text leaves the std part unconfirmed), or left as they are ("none").
Defaults k = k_f = 1, zeta = 0.1 are those of the reference pseudocode. The step entropy, Eq. 12,
g and f above were read in the project page's pseudocode; how f of step t + 1 is added to step t
and the final normalisation were not visible there and follow the spec's reading.

Steps are given by `step_ids` [B, T]: the step index (0, 1, 2, ... in order within a row) of
each token. The next step of step s is step s + 1 of the same row; a step "exists" when at least
one of its tokens is unmasked. Masked tokens (prompt, padding, observations) are ignored and get
advantage 0. `SequenceBatch` has no field for the token entropies or step ids, so `empg_part`
takes them as arguments (build the part per batch inside the jitted update).
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from pgx_lab import validation

Array = jax.Array
FINAL_NORMS = ("mean", "mean_std", "none")


def _check_static(k, k_f, zeta, eps, final_norm, num_steps):
  """Checks the static options; ValueError naming the bad one."""
  for name, value in (("k", k), ("k_f", k_f), ("zeta", zeta)):
    if not isinstance(value, (int, float)) or isinstance(value, bool):
      raise ValueError(f"`{name}` must be a Python number, got {value!r}.")
    validation.check_positive(name, value, allow_zero=True)
  validation.check_positive("eps", eps)
  validation.check_option("final_norm", final_norm, FINAL_NORMS)
  if num_steps is not None and (not isinstance(num_steps, int) or isinstance(num_steps, bool)
                                or num_steps < 1):
    raise ValueError(f"`num_steps` must be an int >= 1 or None, got {num_steps!r}.")


def step_entropies(token_entropy: Array, step_ids: Array, mask: Array, num_steps: int):
  """Mean token entropy of every step, and which steps exist.

  Args:
    token_entropy: [B, T] per-token entropies under the rollout policy.
    step_ids: [B, T] int step index of each token, in [0, num_steps).
    mask: [B, T] 1 for tokens that belong to a step, 0 otherwise.
    num_steps: S, the static number of step slots per row.

  Returns:
    (h [B, S] mean entropy of each step (0 where the step has no token), exists [B, S] bool).
  """
  b, t = mask.shape
  m = mask.astype(token_entropy.dtype)
  ids = jnp.clip(step_ids, 0, num_steps - 1) + num_steps * jnp.arange(b)[:, None]
  seg = lambda x: jax.ops.segment_sum(x.reshape(-1), ids.reshape(-1), num_segments=b * num_steps)
  count = seg(m).reshape(b, num_steps)
  total = seg(jnp.where(m > 0, token_entropy, 0.0)).reshape(b, num_steps)
  exists = count > 0
  return jnp.where(exists, total / jnp.maximum(count, 1.0), 0.0), exists


def step_modulation(h: Array, exists: Array, k: float = 1.0, k_f: float = 1.0,
                    eps: float = 1e-8, last_step_bonus: float = 0.0):
  """g (Eq. 10) and the next-step clarity bonus f (Eq. 11) of every step.

  Args:
    h: [B, S] step entropies. exists: [B, S] bool, which steps exist.
    k, k_f: slopes of g and f. eps: the epsilon of Eqs. 10 and 12.
    last_step_bonus: f given to a step with no next step.

  Returns:
    (h_norm [B, S] min-max normalised entropy (Eq. 12), g [B, S], f_next [B, S]); all 0 where
    the step does not exist.
  """
  any_step = jnp.any(exists)
  lo = jnp.where(any_step, jnp.min(jnp.where(exists, h, jnp.inf)), 0.0)
  hi = jnp.where(any_step, jnp.max(jnp.where(exists, h, -jnp.inf)), 0.0)
  h_norm = jnp.where(exists, (h - lo) / (hi - lo + eps), 0.0)
  w = exists.astype(h.dtype)
  raw_g = jnp.exp(-k * h_norm)
  mean_g = jnp.sum(raw_g * w) / jnp.maximum(jnp.sum(w), 1.0)
  g = w * raw_g / (mean_g + eps)
  f = jnp.exp(-k_f * h_norm)
  next_exists = jnp.concatenate([exists[:, 1:], jnp.zeros_like(exists[:, :1])], axis=1)
  next_f = jnp.concatenate([f[:, 1:], jnp.zeros_like(f[:, :1])], axis=1)
  f_next = w * jnp.where(next_exists, next_f, last_step_bonus)
  return h_norm, g, f_next


def empg_advantages(traj_adv: Array, token_entropy: Array, step_ids: Array, mask: Array, *,
                    k: float = 1.0, k_f: float = 1.0, zeta: float = 0.1,
                    final_norm: str = "mean", last_step_bonus: float = 0.0, eps: float = 1e-8,
                    num_steps: Optional[int] = None) -> Array:
  """EMPG token advantages (module docstring; Wang et al. 2025, Eqs. 10-12).

  Args:
    traj_adv: [B] trajectory outcome advantages A(tau) (e.g. GRPO's group-normalised reward).
    token_entropy: [B, T] float per-token entropies under the rollout (old) policy.
    step_ids: [B, T] int step index of each token (0, 1, ... within a row).
    mask: [B, T] 1 for response (action) tokens, 0 for prompt / observation / padding.
    k: slope of the self-calibrating scale g (Eq. 10). k_f: slope of the clarity bonus (Eq. 11).
    zeta: weight of the clarity bonus.
    final_norm: "mean" (zero mean over the batch's response tokens), "mean_std" (and unit std)
      or "none".
    last_step_bonus: f given to the last step of a trajectory (no next step); 0 by default.
    eps: epsilon of Eqs. 10 and 12 (and of the std in "mean_std").
    num_steps: static number of step slots per row, S; None uses T (always enough).

  Returns:
    [B, T] advantages, 0 at masked tokens and in all-masked rows.
  """
  validation.check_array("traj_adv", traj_adv, ndim=1)
  validation.check_array("token_entropy", token_entropy, ndim=2)
  validation.check_array("step_ids", step_ids, ndim=2, kind="int")
  validation.check_array("mask", mask, ndim=2, kind="number")
  b, t = token_entropy.shape
  validation.check_shape("traj_adv", traj_adv, (b,), against="token_entropy rows")
  validation.check_shape("step_ids", step_ids, (b, t), against="token_entropy")
  validation.check_shape("mask", mask, (b, t), against="token_entropy")
  _check_static(k, k_f, zeta, eps, final_norm, num_steps)
  if not isinstance(last_step_bonus, (int, float)) or isinstance(last_step_bonus, bool):
    raise ValueError(f"`last_step_bonus` must be a Python number, got {last_step_bonus!r}.")
  s = t if num_steps is None else num_steps

  m = mask.astype(token_entropy.dtype)
  h, exists = step_entropies(token_entropy, step_ids, m, s)
  _, g, f_next = step_modulation(h, exists, k, k_f, eps, last_step_bonus)
  a_step = traj_adv.astype(h.dtype)[:, None] * g + zeta * f_next          # [B, S]
  ids = jnp.clip(step_ids, 0, s - 1)
  adv = jnp.take_along_axis(a_step, ids, axis=1) * m                      # [B, T]
  if final_norm == "none":
    return adv
  n = jnp.maximum(jnp.sum(m), 1.0)
  mean = jnp.sum(adv) / n
  adv = (adv - mean) * m
  if final_norm == "mean_std":
    std = jnp.sqrt(jnp.sum(adv ** 2) / n)
    adv = adv / (std + eps)
  return adv


def empg_part(base: Callable, token_entropy: Array, step_ids: Array, **options) -> Callable:
  """An `Estimator` advantage part: `base(batch) -> [B]` modulated by EMPG.

  Args:
    base: an advantage part giving the trajectory advantage [B], e.g.
      `advantage_parts.group_normalized()`.
    token_entropy: [B, T] token entropies of this batch under the rollout policy.
    step_ids: [B, T] int step ids of this batch.
    **options: keyword options of `empg_advantages` (k, k_f, zeta, final_norm, ...), checked now.

  Returns:
    `part(batch) -> [B, T]` using `batch.mask`.
  """
  if not callable(base):
    raise ValueError(f"`base` must be an advantage part (callable), got {type(base).__name__}.")
  unknown = set(options) - {"k", "k_f", "zeta", "final_norm", "last_step_bonus", "eps",
                            "num_steps"}
  if unknown:
    raise ValueError(f"unknown `options` {sorted(unknown)} for empg_part.")
  _check_static(options.get("k", 1.0), options.get("k_f", 1.0), options.get("zeta", 0.1),
                options.get("eps", 1e-8), options.get("final_norm", "mean"),
                options.get("num_steps"))

  def part(batch):
    adv = base(batch)
    if getattr(adv, "ndim", None) != 1:
      raise ValueError("`base` must return a [B] trajectory advantage, got shape "
                       f"{getattr(adv, 'shape', None)}.")
    return empg_advantages(adv, token_entropy, step_ids, batch.mask, **options)

  return part
