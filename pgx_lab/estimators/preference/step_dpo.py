"""Step-level DPO from tree search: MCTS-DPO (Xie et al. 2024, "Monte Carlo Tree Search Boosts
Reasoning via Iterative Preference Learning", arXiv 2405.00451; section and equation numbers
not checked, the maths is checked against the authors' code cited below).

Pairs. At a node of the search tree, its K children are candidate next steps; each child's sequence
is the node's prefix followed by the child's step. The pair is the highest-Q child (chosen) and the
lowest-Q child (rejected): they share exactly the prefix up to the divergence index d, the first
token where the two sequences differ. (Code: YuxiXie/MCTS-DPO `mcts_rl/algorithms/mcts/trainer.py`,
siblings sorted by Q, `better_idx = -1`, `worse_idx = 0`.)

Loss. Only the suffix counts: with masks m_t = [d <= t < L] (our `logp[t]` is the log-prob of token
t itself; the original slices from `diverge_index - 1` because its log-probs are shifted by one),
  h = sum_t m^w_t (logp^w_t - ref^w_t) - sum_t m^l_t (logp^l_t - ref^l_t)
  sigmoid (DPO on step pairs):   -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)
  conservative (the scripts' default): eps = min(1 - c, 0.5), c = 1 / (1 + N_l / max(1, N_w)),
      N the visit counts of the chosen/rejected children (`calculate_preference_confidence`).
  ipo:  (h - 1 / (2 beta))^2 with log-ratios divided by L_suffix ** length_penalty (the code
      normalises whenever `ipo` or `norm_prob` is set).
The search that produces the candidates is `pgx_lab/rollout/step_search.py`.
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from pgx_lab import types
from pgx_lab import validation
from pgx_lab.estimators.preference import pairwise

Array = jax.Array
sg = jax.lax.stop_gradient

LOSS_TYPES = ("sigmoid", "ipo")


class StepPairs(NamedTuple):
  """Step-level preference pairs, one per sibling set; P pairs of length-T sequences.

  chosen_tokens, rejected_tokens: [P, T] int, the full sequences (shared prefix + own step).
  chosen_mask, rejected_mask: [P, T] float, 1 on the suffix d <= t < length, else 0.
  divergence: [P] int32, d, the first index where the two sequences differ.
  chosen_visits, rejected_visits: [P] float, the visit counts N_w, N_l of the two children.
  chosen_q, rejected_q: [P] float, their Q-values.
  valid: [P] bool, whether the sibling set gave a usable pair.
  """
  chosen_tokens: Array
  rejected_tokens: Array
  chosen_mask: Array
  rejected_mask: Array
  divergence: Array
  chosen_visits: Array
  rejected_visits: Array
  chosen_q: Array
  rejected_q: Array
  valid: Array


def divergence_index(tokens_a: Array, tokens_b: Array, length_a: Array, length_b: Array) -> Array:
  """First index where two sequences differ; [P] int32.

  Args:
    tokens_a, tokens_b: [P, T] int sequences.
    length_a, length_b: [P] int numbers of real tokens; positions past a length count as a
      difference (a sequence that is a strict prefix of the other diverges at its length).
  Returns d; for two equal sequences (same tokens, same length) there is no divergence and d is
  their length, which `build_pairs` marks invalid.
  """
  t = jnp.arange(tokens_a.shape[-1])
  in_a = t[None, :] < length_a[:, None]
  in_b = t[None, :] < length_b[:, None]
  differ = (tokens_a != tokens_b) | (in_a != in_b)
  differ = differ & (in_a | in_b)
  first = jnp.argmax(differ, axis=-1)
  return jnp.where(jnp.any(differ, axis=-1), first, jnp.minimum(length_a, length_b)).astype(
      jnp.int32)


def suffix_mask(divergence: Array, length: Array, num_tokens: int) -> Array:
  """[P, T] float mask with ones on d <= t < length."""
  t = jnp.arange(num_tokens)[None, :]
  return ((t >= divergence[:, None]) & (t < length[:, None])).astype(jnp.float32)


def build_pairs(candidate_tokens: Array, candidate_lengths: Array, qvalues: Array, visits: Array,
                available: Array, strict: bool = True) -> StepPairs:
  """Highest-Q vs lowest-Q sibling pairs with suffix-only masks (MCTS-DPO).

  Args:
    candidate_tokens: [P, K, T] int, the sequence (prefix + step) of each of the K siblings of
      each of the P sibling sets.
    candidate_lengths: [P, K] int, the number of real tokens of each sequence.
    qvalues: [P, K] float, the siblings' Q-values from the search.
    visits: [P, K] number, the siblings' visit counts.
    available: [P, K] bool, which siblings were expanded (only those are ranked).
    strict: if True (default) a pair needs Q_w > Q_l; ties are dropped. The original sorts and
      keeps ties; pass False for that.
  Returns a `StepPairs` of P pairs; `valid` is False where fewer than two siblings are available,
  where the two chosen sequences are identical (no divergence), or (strict) where Q ties.
  """
  validation.check_array("candidate_tokens", candidate_tokens, ndim=3, kind="int")
  p, k, t = candidate_tokens.shape
  for name, x, kind in (("candidate_lengths", candidate_lengths, "int"),
                        ("qvalues", qvalues, "float"), ("visits", visits, "number"),
                        ("available", available, "number")):
    validation.check_array(name, x, ndim=2, kind=kind)
    validation.check_shape(name, x, (p, k), against="candidate_tokens[:, :, 0]")
  if k < 2:
    raise ValueError(f"`candidate_tokens` needs at least 2 siblings (axis 1), got shape "
                     f"{candidate_tokens.shape}.")
  available = available.astype(bool)
  q = qvalues.astype(jnp.float32)
  # Ties as in the original's stable ascending sort: chosen = last best, rejected = first worst.
  best = k - 1 - jnp.argmax(jnp.where(available, q, -jnp.inf)[:, ::-1], axis=-1)
  worst = jnp.argmin(jnp.where(available, q, jnp.inf), axis=-1)
  take = lambda x, i: jnp.take_along_axis(x, i[:, None], axis=1)[:, 0]
  take_seq = lambda i: jnp.take_along_axis(candidate_tokens, i[:, None, None], axis=1)[:, 0]
  tok_w, tok_l = take_seq(best), take_seq(worst)
  len_w, len_l = take(candidate_lengths, best), take(candidate_lengths, worst)
  d = divergence_index(tok_w, tok_l, len_w, len_l)
  q_w, q_l = take(q, best), take(q, worst)
  n_w = take(visits, best).astype(jnp.float32)
  n_l = take(visits, worst).astype(jnp.float32)
  valid = (jnp.sum(available, axis=-1) >= 2) & (best != worst) & (d < jnp.maximum(len_w, len_l))
  if strict:
    valid = valid & (q_w > q_l)
  return StepPairs(tok_w, tok_l, suffix_mask(d, len_w, t), suffix_mask(d, len_l, t), d,
                   n_w, n_l, q_w, q_l, valid)


def preference_confidence(chosen_visits: Array, rejected_visits: Array) -> Array:
  """c = 1 / (1 + N_l / max(1, N_w)) (`mcts_rl/utils.py: calculate_preference_confidence`); [P]."""
  return 1.0 / (1.0 + rejected_visits / jnp.maximum(1.0, chosen_visits))


def conservative_smoothing(chosen_visits: Array, rejected_visits: Array) -> Array:
  """eps = min(1 - c, 0.5), the per-pair cDPO label smoothing of MCTS-DPO's trainer; [P]."""
  return jnp.minimum(1.0 - preference_confidence(chosen_visits, rejected_visits), 0.5)


def refresh_reference(params, ref_params, num_updates: Array, refresh_every: int):
  """MCTS-DPO's iterative reference: ref := current params after every `refresh_every` updates.

  Args:
    params: the current policy parameters (any pytree).
    ref_params: the reference parameters (same structure).
    num_updates: scalar int, the number of updates made so far (after this one).
    refresh_every: positive int (the paper's `iteration_interval`, 64 in its scripts).
  Returns the new reference pytree (jittable: the choice is a `where`).
  """
  if not isinstance(refresh_every, int) or refresh_every < 1:
    raise ValueError(f"`refresh_every` must be a positive int, got {refresh_every!r}.")
  now = (num_updates % refresh_every) == 0
  return jax.tree.map(lambda p, r: jnp.where(now, p, r), params, ref_params)


def step_dpo_loss(logp_chosen: Array, logp_rejected: Array, batch: types.PairBatch,
                  chosen_visits: Array, rejected_visits: Array, valid: Optional[Array] = None, *,
                  beta: float = 0.1, loss_type: str = "sigmoid", conservative: bool = True,
                  length_normalize: Optional[bool] = None, length_penalty: float = 1.0):
  """MCTS-DPO's step-level loss over the suffix after divergence; returns (scalar, metrics).

  Args:
    logp_chosen, logp_rejected: [P, T] token log-probs of the pair sequences under the policy.
    batch: a `PairBatch` whose masks are the suffix masks of `build_pairs` and whose ref log-probs
      are [P, T] under the reference policy.
    chosen_visits, rejected_visits: [P] visit counts N_w, N_l (used when `conservative`).
    valid: optional [P] bool; invalid pairs contribute nothing. The loss is the mean over valid
      pairs (0 when there is none).
    beta: the DPO temperature (`scale_coeff`, 0.1 in the paper's scripts); IPO's tau.
    loss_type: "sigmoid" (DPO / cDPO) or "ipo".
    conservative: sigmoid only: per-pair label smoothing eps = min(1 - c, 0.5) from visit counts.
    length_normalize: divide each suffix log-ratio by L_suffix ** length_penalty; None means the
      original's rule (True for "ipo", False for "sigmoid").
    length_penalty: the exponent of that normalisation (1.0 means a token mean).
  Metrics: num_pairs, reward_accuracy (share of valid pairs with h > 0), margin (mean beta h),
  label_smoothing (mean eps over valid pairs).
  """
  validation.check_option("loss_type", loss_type, LOSS_TYPES)
  validation.check_positive("beta", beta)
  validation.check_positive("length_penalty", length_penalty, allow_zero=True)
  pairwise.check_pair_inputs(logp_chosen, logp_rejected, batch)
  p = logp_chosen.shape[0]
  for name, x in (("chosen_visits", chosen_visits), ("rejected_visits", rejected_visits)):
    validation.check_array(name, x, ndim=1, kind="number")
    validation.check_shape(name, x, (p,), against="logp_chosen[:, 0]")
  if valid is None:
    valid = jnp.ones((p,), bool)
  validation.check_array("valid", valid, ndim=1, kind="number")
  validation.check_shape("valid", valid, (p,), against="logp_chosen[:, 0]")
  if length_normalize is None:
    length_normalize = loss_type == "ipo"

  def log_ratio(logp, ref, mask):
    r = jnp.sum(jnp.where(mask > 0, logp - ref, 0.0), axis=-1)
    if length_normalize:
      r = r / jnp.maximum(jnp.sum(mask, axis=-1), 1.0) ** length_penalty
    return r

  valid = valid.astype(bool)
  h = (log_ratio(logp_chosen, batch.ref_chosen_logp, batch.chosen_mask)
       - log_ratio(logp_rejected, batch.ref_rejected_logp, batch.rejected_mask))
  h = jnp.where(valid, h, 0.0)
  eps = jnp.zeros((p,), jnp.float32)
  if loss_type == "sigmoid":
    if conservative:
      eps = conservative_smoothing(chosen_visits.astype(jnp.float32),
                                   rejected_visits.astype(jnp.float32))
    losses = pairwise.sigmoid_loss(h, beta, eps)
  else:
    losses = pairwise.ipo_loss(h, beta)
  w = valid.astype(jnp.float32)
  n = jnp.sum(w)
  loss = jnp.sum(jnp.where(valid, losses, 0.0)) / jnp.maximum(n, 1.0)
  hs = sg(h)
  metrics = {
      "num_pairs": n,
      "reward_accuracy": jnp.sum(w * (hs > 0)) / jnp.maximum(n, 1.0),
      "margin": jnp.sum(w * beta * hs) / jnp.maximum(n, 1.0),
      "label_smoothing": jnp.sum(w * eps) / jnp.maximum(n, 1.0),
  }
  return loss, metrics
