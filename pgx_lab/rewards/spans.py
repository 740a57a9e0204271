"""Span critiques to per-token rewards: Text2Grad's word scores and word-to-token alignment.

Text2Grad (microsoft/Text2Grad, 2025; spec llm_post_training.md section 11): a critic names
"good" and "poor" spans of a response; every word inside a good span scores +1, inside a poor
span -1, every other word 0, and when no span matched at all every word scores 0.1
(`process_response_with_spans` in `nl_gradiant_policy_optimization/ultrafeedback/
train_ultrafeedback.py`). A word's score then becomes the reward of each policy token inside it
(`rematch_scores` / `assign_token_rewards` in `text2grad_trainer.py`; tokens matched to no word
get 0), and when token scores are merged back into words the code keeps the max over a word's
sub-tokens.

Here words and spans are index arrays, not strings: `word_index_of_token[b, t]` is the index of
the word that contains token t of row b (-1 for a token in no word: padding, a prompt, a
separator), and a span is a [B, W] boolean marking the words it covers. The fuzzy string matching
of the original (threshold 0.7) belongs to the tokenizer side and is not reproduced.
`positional_critic` is a programmatic critic for toy tasks whose correctness is known per position.
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from pgx_lab import validation

Array = jax.Array

FALLBACK_SCORE = 0.1


def _check_index(name: str, index: Array, like_name: str, like: Array) -> None:
  validation.check_array(name, index, ndim=2, kind="int")
  validation.check_shape(name, index, like.shape[:1] + index.shape[1:], against=like_name)


def word_scores_from_spans(good: Array, bad: Array, word_mask: Optional[Array] = None,
                           fallback: float = FALLBACK_SCORE) -> Array:
  """Word scores s_w in {+1, 0, -1} from good/bad span membership (Text2Grad).

  A word in a good span scores +1, in a bad span -1, otherwise 0; a word in both keeps +1 (the
  original code gives each word the score of the first matched span containing it, and good
  spans are matched first). A row where no valid word is in any span scores `fallback` at every
  valid word (0.1 in the original: "no span matched").

  Args:
    good: [B, W] bool (or 0/1), words covered by a good span.
    bad: [B, W] bool (or 0/1), words covered by a bad span.
    word_mask: [B, W] 0/1 valid words (padding 0); None means all valid.
    fallback: score of every word of a row with no matched span.

  Returns:
    [B, W] float32 word scores, 0 at masked words.
  """
  validation.check_array("good", good, ndim=2, kind="number")
  validation.check_array("bad", bad, ndim=2, kind="number")
  validation.check_shape("bad", bad, good.shape, against="good")
  if word_mask is None:
    m = jnp.ones(good.shape, jnp.float32)
  else:
    validation.check_array("word_mask", word_mask, ndim=2, kind="number")
    validation.check_shape("word_mask", word_mask, good.shape, against="good")
    m = word_mask.astype(jnp.float32)
  g = (good > 0) & (m > 0)
  b = (bad > 0) & (m > 0)
  s = jnp.where(g, 1.0, jnp.where(b, -1.0, 0.0))
  matched = jnp.any(g | b, axis=1, keepdims=True)
  return jnp.where(matched, s, jnp.asarray(fallback, jnp.float32)) * m


def span_to_token_scores(word_scores: Array, word_index_of_token: Array,
                         mask: Optional[Array] = None) -> Array:
  """Per-token scores c_t = s_{w(t)}, the score of the word containing token t (Text2Grad).

  Args:
    word_scores: [B, W] word scores.
    word_index_of_token: [B, T] int, the word of each token in [0, W); -1 (or any index outside
      [0, W)) for a token in no word, which gets 0.
    mask: [B, T] 0/1 valid tokens; None means all valid. Masked tokens get 0.

  Returns:
    [B, T] token scores (dtype of `word_scores`).
  """
  validation.check_array("word_scores", word_scores, ndim=2)
  _check_index("word_index_of_token", word_index_of_token, "word_scores", word_scores)
  w = word_scores.shape[1]
  idx = word_index_of_token
  inside = (idx >= 0) & (idx < w)
  c = jnp.take_along_axis(word_scores, jnp.clip(idx, 0, max(w - 1, 0)), axis=1) if w else (
      jnp.zeros(idx.shape, word_scores.dtype))
  c = jnp.where(inside, c, 0.0)
  if mask is not None:
    validation.check_array("mask", mask, ndim=2, kind="number")
    validation.check_shape("mask", mask, idx.shape, against="word_index_of_token")
    c = jnp.where(mask > 0, c, 0.0)
  return c


def token_to_word_scores(token_scores: Array, word_index_of_token: Array, num_words: int,
                         mask: Optional[Array] = None) -> Array:
  """Merges sub-token scores into word scores with the max over each word's tokens (Text2Grad).

  Args:
    token_scores: [B, T] per-token scores.
    word_index_of_token: [B, T] int word of each token; tokens outside [0, num_words) are ignored.
    num_words: W, the number of word slots (static int >= 1).
    mask: [B, T] 0/1 valid tokens; None means all valid.

  Returns:
    [B, W] word scores; a word with no valid token gets 0.
  """
  validation.check_array("token_scores", token_scores, ndim=2)
  validation.check_array("word_index_of_token", word_index_of_token, ndim=2, kind="int")
  validation.check_shape("word_index_of_token", word_index_of_token, token_scores.shape,
                         against="token_scores")
  if not isinstance(num_words, int) or num_words < 1:
    raise ValueError(f"`num_words` must be an int >= 1, got {num_words!r}.")
  valid = (word_index_of_token >= 0) & (word_index_of_token < num_words)
  if mask is not None:
    validation.check_array("mask", mask, ndim=2, kind="number")
    validation.check_shape("mask", mask, token_scores.shape, against="token_scores")
    valid = valid & (mask > 0)
  # Invalid tokens go to an extra segment that is dropped.
  seg = jnp.where(valid, word_index_of_token, num_words)

  def row(x, s):
    return jax.ops.segment_max(x, s, num_segments=num_words + 1)[:num_words]

  out = jax.vmap(row)(token_scores, seg)
  return jnp.where(jnp.isfinite(out), out, 0.0)


class Critique(NamedTuple):
  """What `positional_critic` returns: `good`, `bad` [B, W] bool spans and `word_scores` [B, W]."""
  good: Array
  bad: Array
  word_scores: Array


def positional_critic(tokens: Array, targets: Array, checked: Array, word_index_of_token: Array,
                      num_words: int, mask: Optional[Array] = None) -> Critique:
  """A programmatic critic for toys whose correctness is known per position.

  Token t is judged when `checked[t]`, and is right when tokens[b, t] == targets[b, t]. A word
  with at least one judged token is named in a good span when all its judged tokens are right and
  in a bad span when any is wrong; words with no judged token are named in neither. The word
  scores follow `word_scores_from_spans` (fallback 0.1 for a row with no judged word).

  Args:
    tokens: [B, T] int sampled response tokens.
    targets: [B, T] int the right token at each position.
    checked: [T] or [B, T] bool (or 0/1), the positions the task judges.
    word_index_of_token: [B, T] int word of each token (-1: none).
    num_words: W (static int >= 1).
    mask: [B, T] 0/1 valid tokens; None means all valid.

  Returns:
    Critique(good, bad, word_scores), each [B, W].
  """
  validation.check_array("tokens", tokens, ndim=2, kind="int")
  validation.check_array("targets", targets, ndim=2, kind="int")
  validation.check_shape("targets", targets, tokens.shape, against="tokens")
  validation.check_array("checked", checked, ndim=(1, 2), kind="number")
  if checked.ndim == 1:
    validation.check_shape("checked", checked, tokens.shape[1:], against="tokens[0]")
    checked = jnp.broadcast_to(checked, tokens.shape)
  validation.check_shape("checked", checked, tokens.shape, against="tokens")
  _check_index("word_index_of_token", word_index_of_token, "tokens", tokens)
  validation.check_shape("word_index_of_token", word_index_of_token, tokens.shape,
                         against="tokens")
  judged = (checked > 0).astype(jnp.float32)
  if mask is not None:
    validation.check_array("mask", mask, ndim=2, kind="number")
    validation.check_shape("mask", mask, tokens.shape, against="tokens")
    judged = judged * (mask > 0)
  wrong = judged * (tokens != targets)
  # Max over a word's tokens of 0/1 flags = "any token of the word".
  any_judged = token_to_word_scores(judged, word_index_of_token, num_words) > 0
  any_wrong = token_to_word_scores(wrong, word_index_of_token, num_words) > 0
  good = any_judged & ~any_wrong
  bad = any_wrong
  return Critique(good, bad, word_scores_from_spans(good, bad))
