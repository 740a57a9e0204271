r"""Rewards of a directional-stimulus hint: per-keyword step rewards plus a terminal score.

Directional Stimulus Prompting (DSP; Li et al., NeurIPS 2023, "Guiding Large Language Models via
Directional Stimulus Prompting", sec. 2.3 and 3.1): a small policy LM writes a hint (keywords
separated by ';') that is inserted into the prompt of a frozen LLM; the LLM's output is scored
against a hidden reference. Confirmed in the authors' code, Leezekun/Directional-Stimulus-Prompting,
`rl4lms/envs/text_generation/test_reward.py`, class `RewardSummarizationWithHint.__call__`, with the
CNN/DM config `flan-t5_nlpo_on_supervised-cnndm_1000.yml`:

  * At the step that ends the episode (EOS, or the length limit) the reward is only the terminal
    one, `gpt3_coef * mean_k metric(LLM_k(x, hint), ref)` (gpt3_coef = 10, metric = mean of
    ROUGE-1/2/L, 4 LLM samples). With `use_baseline` the LLM term is
    `10 * (metric(with hint) - metric(without hint))`, still multiplied by gpt3_coef.
    (The config's `t5_coef` term is 0 and is not implemented here.)
  * At every other step whose action is the split token ';' (step_reward_coef > 0) the reward is
    `step_reward_coef * c`, c judging the keyword that ';' just closed (the text between the
    previous ';' and this one): c = t5_neg_coef (-0.2) if it is empty, in the `avoid_keywords`
    list, or a substring of the earlier keywords joined by ';' (repeated); else t5_pos_coef (+1)
    if it is a substring of the reference, t5_neg_coef otherwise. A keyword that no ';' closes
    gets no step reward; nor does a ';' that is itself the last step (the `done` branch comes
    first).
  * Every other step gets 0.

Token-level reading (ours): the code tests strings with Python's `in` (substring). Here a keyword is
the token span between separators, "occurs in the reference" means it is a contiguous token
sub-sequence of the reference tokens, and "repeated" means it is a contiguous sub-sequence of the
hint before the keyword (the earlier keywords). Both tests use the longest-common-suffix recursion
run[t, j] = [a_t == b_j] (run[t-1, j-1] + 1) of the longest-common-substring problem.

`rouge1_f1` is the ROUGE-1 F-measure (Lin 2004: clipped unigram overlap) used as the toy's metric.
All functions are pure array maps, jittable and vmappable (`sep_id` static under jit).
"""

import math
from typing import Optional

import jax
import jax.numpy as jnp

from pgx_lab import validation

Array = jax.Array


def _check_tokens_mask(tokens, mask, tokens_name="tokens", mask_name="mask"):
  validation.check_array(tokens_name, tokens, ndim=2, kind="int")
  validation.check_array(mask_name, mask, ndim=2, kind="number")
  validation.check_shape(mask_name, mask, tokens.shape, against=tokens_name)


def _check_coef(name, value):
  if isinstance(value, (int, float)) and not math.isfinite(value):
    raise ValueError(f"`{name}` must be finite, got {value!r}.")


def last_valid_index(mask: Array) -> Array:
  """[B] int32 index of the last position with mask > 0 in each row; -1 for an empty row.

  Args:
    mask: [B, T] 0/1 valid-token mask.
  """
  validation.check_array("mask", mask, ndim=2, kind="number")
  t = mask.shape[1]
  pos = jnp.where(mask > 0, jnp.arange(t)[None, :], -1)
  return jnp.max(pos, axis=1, initial=-1).astype(jnp.int32)


def _suffix_runs(a: Array, a_ok: Array, b: Array, b_ok: Array) -> Array:
  """run[b, t, j]: length of the longest common suffix of a[:t+1] and b[:j+1] over ok tokens.

  a: [B, T] int, a_ok: [B, T] bool; b: [B, R] int, b_ok: [B, R] bool. Returns [B, T, R] int32.
  """
  eq = (a[:, :, None] == b[:, None, :]) & a_ok[:, :, None] & b_ok[:, None, :]   # [B, T, R]

  def step(prev, eq_t):                       # prev: run[t-1] [B, R]
    shifted = jnp.pad(prev, ((0, 0), (1, 0)))[:, :-1]       # run[t-1, j-1], 0 at j = 0
    cur = jnp.where(eq_t, shifted + 1, 0)
    return cur, cur

  init = jnp.zeros((a.shape[0], b.shape[1]), jnp.int32)
  _, runs = jax.lax.scan(step, init, jnp.swapaxes(eq, 0, 1))
  return jnp.swapaxes(runs, 0, 1)


def keyword_step_rewards(tokens: Array, mask: Array, reference: Array, reference_mask: Array,
                         sep_id: int, *, pos_coef: float = 1.0, neg_coef: float = -0.2,
                         step_reward_coef: float = 1.0,
                         avoid_ids: Optional[Array] = None) -> Array:
  """DSP's per-keyword step rewards, placed on the separator that closes each keyword; [B, T].

  Args:
    tokens: [B, T] int hint tokens (keywords separated by `sep_id`, typically ending with EOS).
    mask: [B, T] 0/1 valid tokens (1 up to and including the last generated token).
    reference: [B, R] int reference tokens.
    reference_mask: [B, R] 0/1 valid reference tokens.
    sep_id: the separator token id (';' in DSP).
    pos_coef: reward of a new keyword found in the reference (t5_pos_coef, 1.0).
    neg_coef: reward of any other closed keyword: absent, empty, repeated or avoided
      (t5_neg_coef, -0.2 in the CNN/DM config; used as is, not negated).
    step_reward_coef: multiplies every step reward (1.0).
    avoid_ids: optional [K] int ids of "meaningless" one-token keywords (DSP's `avoid_keywords`).

  Returns:
    [B, T] float32: step_reward_coef * c at each valid separator that is not the row's last valid
    token, 0 elsewhere (padding, non-separators, the last token, an empty row).
  """
  _check_tokens_mask(tokens, mask)
  _check_tokens_mask(reference, reference_mask, "reference", "reference_mask")
  if reference.shape[0] != tokens.shape[0]:
    raise ValueError(f"`reference` must have {tokens.shape[0]} rows (the rows of `tokens`), got "
                     f"shape {tuple(reference.shape)}.")
  if not isinstance(sep_id, int) or isinstance(sep_id, bool):
    raise ValueError(f"`sep_id` must be a Python int, got {sep_id!r}.")
  for name, value in (("pos_coef", pos_coef), ("neg_coef", neg_coef),
                      ("step_reward_coef", step_reward_coef)):
    _check_coef(name, value)
  if avoid_ids is not None:
    validation.check_array("avoid_ids", avoid_ids, ndim=1, kind="int")

  _, t = tokens.shape
  valid = mask > 0
  is_sep = (tokens == sep_id) & valid
  is_word = valid & ~is_sep
  pos = jnp.arange(t)[None, :]
  # start[b, s]: first position of the keyword that a separator at s closes (one after the
  # previous separator, 0 if none); its length is s - start.
  last_sep_before = jax.lax.cummax(jnp.where(is_sep, pos, -1), axis=1)
  prev_sep = jnp.pad(last_sep_before, ((0, 0), (1, 0)), constant_values=-1)[:, :-1]
  start = prev_sep + 1
  length = pos - start                                          # [B, T], meaningful where is_sep

  # Occurs in the reference: some reference run ending at j matches the whole keyword.
  ref_ok = reference_mask > 0
  ref_runs = _suffix_runs(tokens, is_word, reference, ref_ok)              # [B, T, R]
  ref_runs_before = jnp.pad(ref_runs, ((0, 0), (1, 0), (0, 0)))[:, :-1]   # run ending at s - 1
  in_ref = jnp.any(ref_runs_before >= length[:, :, None], axis=2)

  # Repeated: the keyword matches a run of the hint that ends before the keyword starts.
  self_runs = _suffix_runs(tokens, is_word, tokens, is_word)               # [B, T, T]
  self_before = jnp.pad(self_runs, ((0, 0), (1, 0), (0, 0)))[:, :-1]
  earlier = pos[:, None, :] < start[:, :, None]                             # [B, T(s), T(i)]
  repeated = jnp.any((self_before >= length[:, :, None]) & earlier, axis=2)

  empty = length <= 0
  if avoid_ids is not None:
    prev_tok = jnp.pad(tokens, ((0, 0), (1, 0)))[:, :-1]
    avoided = (length == 1) & jnp.any(prev_tok[:, :, None] == avoid_ids[None, None, :], axis=2)
  else:
    avoided = jnp.zeros_like(empty)
  good = ~empty & ~avoided & ~repeated & in_ref
  c = jnp.where(good, pos_coef, neg_coef)
  not_last = pos != last_valid_index(mask)[:, None]
  return jnp.where(is_sep & not_last, step_reward_coef * c, 0.0).astype(jnp.float32)


def terminal_hint_reward(score: Array, mask: Array, *, coef: float = 10.0,
                         baseline_score: Optional[Array] = None) -> Array:
  """DSP's terminal reward on the last valid token of each hint; [B, T].

  R = coef * score, or, in DSP's baseline mode (`use_baseline`), R = coef * 10 * (score -
  baseline_score) with baseline_score the metric of the LLM's output without the hint.

  Args:
    score: [B] metric of the frozen LLM's output given the hint, against the reference.
    mask: [B, T] 0/1 valid hint tokens; a row with no valid token gets no reward.
    coef: gpt3_coef (10.0).
    baseline_score: optional [B] metric of the LLM's output without a hint.
  """
  validation.check_array("score", score, ndim=1)
  validation.check_array("mask", mask, ndim=2, kind="number")
  if score.shape[0] != mask.shape[0]:
    raise ValueError(f"`score` must have shape ({mask.shape[0]},) (the rows of `mask`), got "
                     f"{tuple(score.shape)}.")
  _check_coef("coef", coef)
  r = score
  if baseline_score is not None:
    validation.check_array("baseline_score", baseline_score, ndim=1)
    validation.check_shape("baseline_score", baseline_score, score.shape, against="score")
    r = 10.0 * (score - baseline_score)
  last = last_valid_index(mask)
  at_last = jnp.arange(mask.shape[1])[None, :] == last[:, None]
  return jnp.where(at_last, coef * r[:, None], 0.0).astype(jnp.float32)


def hint_rewards(tokens: Array, mask: Array, reference: Array, reference_mask: Array,
                 score: Array, sep_id: int, *, coef: float = 10.0,
                 baseline_score: Optional[Array] = None, pos_coef: float = 1.0,
                 neg_coef: float = -0.2, step_reward_coef: float = 1.0,
                 avoid_ids: Optional[Array] = None) -> Array:
  """DSP's per-token rewards of a hint: `keyword_step_rewards + terminal_hint_reward`; [B, T].

  Args: as `keyword_step_rewards` (tokens, mask, reference, reference_mask, sep_id, pos_coef,
  neg_coef, step_reward_coef, avoid_ids) and `terminal_hint_reward` (score, coef,
  baseline_score). Step rewards never sit on the last valid token, so the two never overlap.
  """
  step = keyword_step_rewards(tokens, mask, reference, reference_mask, sep_id, pos_coef=pos_coef,
                              neg_coef=neg_coef, step_reward_coef=step_reward_coef,
                              avoid_ids=avoid_ids)
  return step + terminal_hint_reward(score, mask, coef=coef, baseline_score=baseline_score)


def rouge1_f1(output: Array, output_mask: Array, reference: Array, reference_mask: Array) -> Array:
  """ROUGE-1 F-measure of each output against its reference (Lin 2004); [B] in [0, 1].

  overlap = sum_w min(count_out(w), count_ref(w)) over valid tokens, P = overlap / |out|,
  R = overlap / |ref|, F1 = 2 P R / (P + R) = 2 overlap / (|out| + |ref|); 0 when the overlap is 0
  (including empty outputs or references).

  Args:
    output: [B, S] int output tokens; output_mask: [B, S] 0/1 valid.
    reference: [B, R] int reference tokens; reference_mask: [B, R] 0/1 valid.
  """
  _check_tokens_mask(output, output_mask, "output", "output_mask")
  _check_tokens_mask(reference, reference_mask, "reference", "reference_mask")
  if reference.shape[0] != output.shape[0]:
    raise ValueError(f"`reference` must have {output.shape[0]} rows (the rows of `output`), got "
                     f"shape {tuple(reference.shape)}.")
  om = (output_mask > 0).astype(jnp.float32)
  rm = (reference_mask > 0).astype(jnp.float32)
  # count of each output token's id among the output (c_out) and the reference (c_ref):
  # sum over output tokens of min(c_out, c_ref) / c_out = sum_w min(count_out(w), count_ref(w)).
  c_out = jnp.sum((output[:, :, None] == output[:, None, :]) * om[:, None, :], axis=2)
  c_ref = jnp.sum((output[:, :, None] == reference[:, None, :]) * rm[:, None, :], axis=2)
  overlap = jnp.sum(om * jnp.minimum(c_out, c_ref) / jnp.maximum(c_out, 1.0), axis=1)
  denom = jnp.sum(om, axis=1) + jnp.sum(rm, axis=1)
  return jnp.where(overlap > 0, 2.0 * overlap / jnp.maximum(denom, 1.0), 0.0)
