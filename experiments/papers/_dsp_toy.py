r"""The DSP toy (spec llm_post_training.md section 15 (d)): documents, hidden references, a frozen
"LLM" that summarises with a hint, and the TextRank-like pseudo-hints of the SFT start.

Vocabulary (V = 15): BOS = 0, SEP = 1 (the ';' that closes a keyword), EOS = 2, and NUM_WORDS = 12
words with ids 3..14. Per seed a hidden *salient* subset of NUM_SALIENT = 4 words is drawn.

Document (DOC_LEN = 8 tokens, shuffled): two non-salient "filler" words, the first three times and
the second twice; r in {1, 2} salient words (uniform), once each; 3 - r other non-salient words,
once each. So the two most frequent words are never salient.

Reference "summary": the salient words of the document (r tokens): a function of the document the
policy can learn (which words are salient is fixed per seed), but not its most frequent words.

Frozen scorer ("LLM"): writes a summary of OUT_LEN = 3 distinct words: the hinted words first, in
hint order (every word token of the hint counts, repeats dropped, hallucinated words included),
then the document's words by frequency (ties by first position) until it has 3. Score = ROUGE-1 F1
(`rewards.hints.rouge1_f1`) of the summary against the reference. Without a hint it writes the 3
most frequent words, like a plain LLM summary that misses the salient content.

Pseudo-hint (the TextRank analogue, no reference used): the document's three most frequent
distinct words (ties by first position), "f1 SEP f2 SEP f3 SEP EOS"; f3 is one of the
singletons, salient or not. With it the scorer writes the same summary as without a hint.
The best hint names the document's salient words (`oracle_hints`): F1 = 2r / (3 + r).
"""

import jax
import jax.numpy as jnp

from pgx_lab.rewards import hints

BOS, SEP, EOS = 0, 1, 2
FIRST_WORD = 3
NUM_WORDS = 12
VOCAB = FIRST_WORD + NUM_WORDS
NUM_SALIENT = 4
DOC_LEN = 8
OUT_LEN = 3
NUM_HINTS = 3         # keywords in a pseudo-hint
HINT_LEN = 7          # room for three keywords, their separators and EOS
Array = jax.Array


def draw_salient(key: Array) -> Array:
  """[NUM_WORDS] bool: the hidden salient subset (NUM_SALIENT words) of one seed."""
  perm = jax.random.permutation(key, NUM_WORDS)
  return jnp.zeros(NUM_WORDS, bool).at[perm[:NUM_SALIENT]].set(True)


def sample_documents(key: Array, salient: Array, n: int) -> Array:
  """[n, DOC_LEN] int32 documents (word ids) built as the module docstring says."""
  k_sal, k_non, k_r, k_pos = jax.random.split(key, 4)
  words = jnp.arange(NUM_WORDS)
  # Salient words first / non-salient first, each in a random order per document.
  sal_order = jnp.argsort(jnp.where(salient, 0.0, 1.0)[None] +
                          jax.random.uniform(k_sal, (n, NUM_WORDS)) * 0.5, axis=1)
  non_order = jnp.argsort(jnp.where(salient, 1.0, 0.0)[None] +
                          jax.random.uniform(k_non, (n, NUM_WORDS)) * 0.5, axis=1)
  s, o = words[sal_order], words[non_order]           # s[:, :4] salient, o[:, :8] non-salient
  two = jax.random.bernoulli(k_r, 0.5, (n,))
  x = jnp.where(two, s[:, 1], o[:, 2])
  doc = jnp.stack([o[:, 0], o[:, 0], o[:, 0], o[:, 1], o[:, 1], s[:, 0], x, o[:, 3]], axis=1)
  perm = jnp.argsort(jax.random.uniform(k_pos, (n, DOC_LEN)), axis=1)
  return (jnp.take_along_axis(doc, perm, axis=1) + FIRST_WORD).astype(jnp.int32)


def reference(docs: Array, salient: Array):
  """The reference summary: (tokens [n, DOC_LEN], mask [n, DOC_LEN]) = the salient words of each
  document (each occurs once, so no duplicates)."""
  return docs, salient[docs - FIRST_WORD].astype(jnp.float32)


def words_by_frequency(docs: Array) -> Array:
  """[n, DOC_LEN] the document's tokens sorted by frequency (desc), ties by first position."""
  same = docs[:, :, None] == docs[:, None, :]
  count = jnp.sum(same, axis=2)
  first = jnp.argmax(same, axis=2)
  order = jnp.argsort(-(count * (DOC_LEN + 1) - first), axis=1, stable=True)
  return jnp.take_along_axis(docs, order, axis=1)


def pseudo_hints(docs: Array):
  """The SFT targets: (tokens [n, HINT_LEN], mask [n, HINT_LEN]) = "f1 SEP f2 SEP f3 SEP EOS"
  with f1, f2, f3 the three most frequent distinct words (ties by first position)."""
  ranked = words_by_frequency(docs)
  dup = jnp.any((ranked[:, :, None] == ranked[:, None, :]) &
                (jnp.arange(DOC_LEN)[:, None] > jnp.arange(DOC_LEN)[None, :])[None], axis=2)
  order = jnp.argsort(dup, axis=1, stable=True)          # distinct words first, in rank order
  top = jnp.take_along_axis(ranked, order[:, :NUM_HINTS], axis=1)
  n = docs.shape[0]
  cols = []
  for j in range(NUM_HINTS):
    cols += [top[:, j], jnp.full((n,), SEP)]
  cols += [jnp.full((n,), EOS)] * (HINT_LEN - 2 * NUM_HINTS)
  toks = jnp.stack(cols, axis=1).astype(jnp.int32)
  mask = (jnp.arange(HINT_LEN) <= 2 * NUM_HINTS).astype(jnp.float32)
  return toks, jnp.broadcast_to(mask, toks.shape)


def oracle_hints(docs: Array, salient: Array):
  """The best hint (knows the reference): its salient words, "s1 SEP [s2 SEP] EOS"; returns
  (tokens [n, HINT_LEN], mask [n, HINT_LEN]). Its reward is 10 * 0.5 + 1 = 6 for one salient word
  and 10 * 0.8 + 2 = 10 for two."""
  ref, ref_mask = reference(docs, salient)
  order = jnp.argsort(ref_mask < 0.5, axis=1, stable=True)
  kw = jnp.take_along_axis(ref, order[:, :2], axis=1)
  two = jnp.sum(ref_mask, axis=1) >= 2
  n = docs.shape[0]
  sep, eos = jnp.full((n,), SEP), jnp.full((n,), EOS)
  toks = jnp.stack([kw[:, 0], sep, jnp.where(two, kw[:, 1], EOS), jnp.where(two, SEP, EOS)] +
                   [eos] * (HINT_LEN - 4), axis=1).astype(jnp.int32)
  length = jnp.where(two, 5, 3)
  return toks, (jnp.arange(HINT_LEN)[None, :] < length[:, None]).astype(jnp.float32)


def scorer_output(docs: Array, hint: Array, hint_mask: Array):
  """The frozen LLM's summary: (tokens [n, OUT_LEN], mask [n, OUT_LEN]).

  Args:
    docs: [n, DOC_LEN] documents; hint: [n, H] hint tokens; hint_mask: [n, H] valid hint tokens.
  """
  is_word = (hint >= FIRST_WORD) & (hint_mask > 0)
  cand = jnp.concatenate([hint, words_by_frequency(docs)], axis=1)
  ok = jnp.concatenate([is_word, jnp.ones(docs.shape, bool)], axis=1)
  c = cand.shape[1]
  earlier = jnp.arange(c)[None, :, None] > jnp.arange(c)[None, None, :]   # [1, i, j]: j < i
  dup = jnp.any((cand[:, :, None] == cand[:, None, :]) & ok[:, None, :] & earlier, axis=2)
  kept = ok & ~dup
  rank = jnp.cumsum(kept, axis=1) - 1
  slot = (rank[:, None, :] == jnp.arange(OUT_LEN)[None, :, None]) & kept[:, None, :]  # [n, K, C]
  out = jnp.sum(jnp.where(slot, cand[:, None, :], 0), axis=2).astype(jnp.int32)
  return out, jnp.any(slot, axis=2).astype(jnp.float32)


def score(docs: Array, salient: Array, hint: Array, hint_mask: Array) -> Array:
  """[n] ROUGE-1 F1 of the scorer's summary given the hint against the reference."""
  ref, ref_mask = reference(docs, salient)
  out, out_mask = scorer_output(docs, hint, hint_mask)
  return hints.rouge1_f1(out, out_mask, ref, ref_mask)
