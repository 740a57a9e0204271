r"""NLPO's learned top-p action mask and the masked (renormalised) log-probs it induces.

NLPO, Natural Language Policy Optimization (Ramamurthy et al., ICLR 2023, "Is Reinforcement
Learning (Not) for Natural Language Processing?", Alg. 1): PPO whose action space at each step is
restricted to the top-p tokens of a *masking policy*, a copy of the current policy refreshed every
`target_update_iterations` rollout iterations (the refresh is the caller's: copy the params).

Confirmed in the released code, allenai/RL4LMs:
  * `rl4lms/algorithms/common/maskable/logits_processor.py`, `mask_type="learned_top_p"`: sort the
    masking policy's logits descending, cumulative softmax probabilities `cum`; a token at sorted
    rank k >= 1 is removed iff cum[k - 1] > top_p (the shift keeps the token that crosses p), the
    top `min_tokens_to_keep` ranks are never removed (the causal-LM processor keeps exactly that
    many; the seq2seq one keeps one more), and the tokenizer's special ids are always allowed.
    So the kept set is the smallest prefix of the ranking whose mass *exceeds* top_p (ties at
    exactly top_p keep one more token), never empty.
  * `rl4lms/envs/text_generation/policy/{causal,seq2seq}_policy.py` (`forward_policy`) with
    `rl4lms/algorithms/common/maskable/distributions.py` (`MaskableCategorical.apply_masking`):
    the masked distribution is `Categorical(probs=where(mask, probs, 0))`, i.e. the policy's
    probabilities renormalised over the allowed set, and its `log_prob` is what
    `evaluate_actions` returns. `alg_wrappers.py` stores those masked log-probs (and the mask) at
    rollout time as `old_log_prob`, and `nlpo.py` forms the PPO ratio exp(log_prob -
    old_log_prob) from the masked log-probs of both. The mask is not only a sampling filter: the
    ratio uses log-probs renormalised over it. The KL penalty to the reference, by contrast, uses
    the raw (unmasked) log-probs (`kl_div = raw_log_probs - ref_log_probs`).
  * The entropy is that of the masked distribution (masked entries contribute 0).

Degenerate rows: masking logits that are all -inf are read as uniform; an action mask row with no
allowed token is read as "no mask" (every token allowed), so padding rows stored as zeros give
finite values. Disallowed entries of `masked_log_softmax` are -inf; gradients never hold NaN.
"""

from typing import Optional

import jax
import jax.numpy as jnp

from pgx_lab import validation

Array = jax.Array


def top_p_action_mask(mask_logits: Array, top_p: float, *, min_tokens_to_keep: int = 1,
                      always_allow: Optional[Array] = None) -> Array:
  """RL4LMs' `learned_top_p` mask from the masking policy's logits; bool [..., V].

  Args:
    mask_logits: [..., V] float logits of the masking policy (may hold -inf).
    top_p: float in (0, 1]: tokens are kept, most probable first, until the kept mass exceeds it.
    min_tokens_to_keep: static int in [1, V]: the top ranks always kept.
    always_allow: optional [V] bool, tokens that are always allowed (RL4LMs: special ids).

  Returns:
    bool [..., V]; True for allowed tokens (at least `min_tokens_to_keep` per row).
  """
  validation.check_array("mask_logits", mask_logits, kind="float")
  if mask_logits.ndim < 1:
    raise ValueError(f"`mask_logits` must have a vocabulary axis, got shape {mask_logits.shape}.")
  v = mask_logits.shape[-1]
  if isinstance(top_p, bool) or (isinstance(top_p, (int, float)) and not 0.0 < top_p <= 1.0):
    raise ValueError(f"`top_p` must be in (0, 1], got {top_p!r}.")
  if (not isinstance(min_tokens_to_keep, int) or isinstance(min_tokens_to_keep, bool)
      or not 1 <= min_tokens_to_keep <= v):
    raise ValueError(f"`min_tokens_to_keep` must be an int in [1, {v}], got "
                     f"{min_tokens_to_keep!r}.")
  if always_allow is not None:
    validation.check_array("always_allow", always_allow, ndim=1, kind="number")
    validation.check_shape("always_allow", always_allow, (v,), against="mask_logits[..., :]")
  # All -inf rows: read as uniform (no NaN from the softmax).
  finite_row = jnp.any(mask_logits > -jnp.inf, axis=-1, keepdims=True)
  z = jnp.where(finite_row, mask_logits, 0.0)
  order = jnp.argsort(-z, axis=-1, stable=True)
  probs = jax.nn.softmax(jnp.take_along_axis(z, order, axis=-1), axis=-1)
  mass_above = jnp.cumsum(probs, axis=-1) - probs          # cum[k - 1]; 0 at rank 0
  rank = jnp.arange(v)
  keep_sorted = (mass_above <= top_p) | (rank < min_tokens_to_keep)
  keep = jnp.put_along_axis(jnp.zeros(z.shape, bool), order, keep_sorted, axis=-1,
                            inplace=False)
  if always_allow is not None:
    keep = keep | (always_allow > 0)
  return keep


def _check_logits_mask(logits, action_mask):
  validation.check_array("logits", logits, kind="float")
  validation.check_array("action_mask", action_mask, kind="number")
  validation.check_shape("action_mask", action_mask, logits.shape, against="logits")


def _effective_mask(action_mask):
  allowed = action_mask > 0
  return allowed | ~jnp.any(allowed, axis=-1, keepdims=True)


def masked_log_softmax(logits: Array, action_mask: Array) -> Array:
  """Log-probs renormalised over the allowed tokens: log(p_v / sum_{u allowed} p_u); [..., V].

  Args:
    logits: [..., V] float logits of the current policy.
    action_mask: [..., V] bool/0-1 allowed tokens (a row with none allowed means all allowed).

  Returns:
    [..., V]: the masked log-softmax, -inf at disallowed tokens. Gradients are finite (zero for
    disallowed logits).
  """
  _check_logits_mask(logits, action_mask)
  allowed = _effective_mask(action_mask)
  z = jnp.where(allowed, logits, -jnp.inf)
  lse = jax.nn.logsumexp(z, axis=-1, keepdims=True)
  safe = jnp.where(allowed, logits, 0.0) - lse
  return jnp.where(allowed, safe, -jnp.inf)


def masked_token_logp(logits: Array, action_mask: Array, tokens: Array,
                      valid: Optional[Array] = None) -> Array:
  """NLPO's log pi(y_t | s_t) renormalised over the mask at the taken tokens; [B, T].

  The quantity RL4LMs stores as `old_log_prob` and uses in the PPO ratio.

  Args:
    logits: [B, T, V] logits of the current (or rollout) policy.
    action_mask: [B, T, V] allowed tokens at each step (from `top_p_action_mask`).
    tokens: [B, T] int taken tokens.
    valid: optional [B, T] 0/1 mask; invalid positions return 0.

  Returns:
    [B, T] log-probs; -inf only at a valid position whose token the mask disallows.
  """
  _check_logits_mask(logits, action_mask)
  if logits.ndim != 3:
    raise ValueError(f"`logits` must have rank 3 [B, T, V], got shape {logits.shape}.")
  validation.check_array("tokens", tokens, ndim=2, kind="int")
  validation.check_shape("tokens", tokens, logits.shape[:2], against="logits[..., 0]")
  logp_all = masked_log_softmax(logits, action_mask)
  logp = jnp.take_along_axis(logp_all, tokens[..., None], axis=-1)[..., 0]
  if valid is not None:
    validation.check_array("valid", valid, ndim=2, kind="number")
    validation.check_shape("valid", valid, tokens.shape, against="tokens")
    logp = jnp.where(valid > 0, logp, 0.0)
  return logp


def masked_entropy(logits: Array, action_mask: Array) -> Array:
  """Entropy of the policy renormalised over the allowed tokens; [...] (masked terms are 0).

  Args:
    logits: [..., V] float logits; action_mask: [..., V] allowed tokens.
  """
  logp_all = masked_log_softmax(logits, action_mask)
  allowed = _effective_mask(action_mask)
  safe = jnp.where(allowed, logp_all, 0.0)
  return -jnp.sum(jnp.where(allowed, jnp.exp(safe) * safe, 0.0), axis=-1)
