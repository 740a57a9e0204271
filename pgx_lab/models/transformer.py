"""A small causal transformer language model with a value head and a key/value cache.

A GPT-style decoder (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners"):
token embedding + learned positional embedding, `num_layers` pre-LayerNorm blocks
`x + Attn(LN(x))`, `x + MLP(LN(x))` with multi-head causal self-attention (Vaswani et al. 2017)
and a GELU MLP of width `mlp_ratio * d_model`, a final LayerNorm, then
  - the output head: a separate Dense layer (untied, the default), or, with
    `tie_embeddings=True`, the transpose of the token embedding (Press & Wolf 2017);
  - the value head: a Dense(1) on the same final hidden state, `values[b, t]` estimating the
    return of the state "prefix tokens[b, :t+1]" (None when `value_head=False`).
No dropout. Params are a plain pytree (`init_params`), used through functions (`apply`, ...).

Padding. `attention_mask[b, t] = 1` marks real tokens. A padded key is never attended to (a padded
query attends to itself only, so that no softmax row is empty; its outputs are garbage to be
masked by the caller). Positions count real tokens: position = (number of real tokens up to and
including t) - 1, so a left-padded prompt gets exactly the positions, hence the logits, of the same
prompt unpadded.

KV cache. `init_cache` gives zero keys/values for `S` slots; `prefill` runs the full forward on a
prompt and writes its keys/values; `decode_step` feeds one token at slot `position`. The cached and
the uncached paths run the same module method (`TransformerLM.extend`): the uncached forward is
`extend` with no cache, so the two give the same logits up to float rounding.
"""

from typing import NamedTuple, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pgx_lab import validation

Array = jax.Array


class TransformerConfig(NamedTuple):
  """Static hyper-parameters (hashable: pass it as a static argument of `jax.jit`).

  Attributes:
    vocab_size: number of token ids V.
    max_len: number of learned positions; sequences (prompt + response) have at most this many
      tokens.
    d_model: width of the residual stream; must be divisible by `num_heads`.
    num_layers: number of transformer blocks.
    num_heads: attention heads.
    mlp_ratio: the MLP hidden width is `mlp_ratio * d_model`.
    value_head: whether the model has a scalar value head.
    tie_embeddings: output logits as `h @ E^T` with the token embedding E (else a separate head).
  """

  vocab_size: int
  max_len: int
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  mlp_ratio: int = 4
  value_head: bool = True
  tie_embeddings: bool = False


class KVCache(NamedTuple):
  """Per-layer keys and values, each [num_layers, B, S, num_heads, d_model // num_heads]."""

  keys: Array
  values: Array


class _Attention(nn.Module):
  """Multi-head causal self-attention over the new tokens, optionally appended to a cache."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, x, key_mask, index, layer_cache):
    c = self.config
    dh = c.d_model // c.num_heads
    proj = lambda name: nn.DenseGeneral((c.num_heads, dh), name=name)
    q, k, v = proj("query")(x), proj("key")(x), proj("value")(x)  # [B, T, H, Dh]
    if layer_cache is not None:
      k = jax.lax.dynamic_update_slice(layer_cache[0], k, (0, index, 0, 0))
      v = jax.lax.dynamic_update_slice(layer_cache[1], v, (0, index, 0, 0))
    t, s = x.shape[1], k.shape[1]
    q_pos = index + jnp.arange(t)[:, None]  # [T, 1] slots of the queries
    k_pos = jnp.arange(s)[None, :]  # [1, S] slots of the keys
    allowed = (k_pos <= q_pos)[None] & ((key_mask[:, None, :] > 0) | (k_pos == q_pos)[None])
    scores = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(dh).astype(np.float32)
    scores = jnp.where(allowed[:, None], scores, -jnp.inf)
    out = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(scores, axis=-1), v)
    out = nn.DenseGeneral(c.d_model, axis=(-2, -1), name="out")(out)
    return out, (None if layer_cache is None else (k, v))


class _Block(nn.Module):
  """Pre-LayerNorm block: x + Attn(LN(x)), then x + MLP(LN(x)) with a GELU MLP."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, x, key_mask, index, layer_cache):
    c = self.config
    a, layer_cache = _Attention(c, name="attn")(nn.LayerNorm(name="ln_attn")(x), key_mask, index,
                                                layer_cache)
    x = x + a
    h = nn.Dense(c.mlp_ratio * c.d_model, name="mlp_in")(nn.LayerNorm(name="ln_mlp")(x))
    x = x + nn.Dense(c.d_model, name="mlp_out")(nn.gelu(h))
    return x, layer_cache


class TransformerLM(nn.Module):
  """The causal decoder. `__call__(tokens, attention_mask) -> (logits [B,T,V], values [B,T])`."""

  config: TransformerConfig

  def setup(self):
    c = self.config
    init = nn.initializers.normal(0.02)
    self.embed = nn.Embed(c.vocab_size, c.d_model, embedding_init=init)
    self.pos_embed = nn.Embed(c.max_len, c.d_model, embedding_init=init)
    self.blocks = [_Block(c) for _ in range(c.num_layers)]
    self.ln_final = nn.LayerNorm()
    if not c.tie_embeddings:
      self.head = nn.Dense(c.vocab_size)
    if c.value_head:
      self.value = nn.Dense(1)

  def __call__(self, tokens, attention_mask=None):
    if attention_mask is None:
      attention_mask = jnp.ones(tokens.shape, jnp.int32)
    logits, values, _ = self.extend(tokens, attention_mask, 0, None)
    return logits, values

  def with_hidden(self, tokens, attention_mask):
    """(logits [B,T,V], values [B,T] or None, hidden [B,T,D]): `__call__` plus the last hidden
    state (after the final LayerNorm), the features of the output head."""
    if attention_mask is None:
      attention_mask = jnp.ones(tokens.shape, jnp.int32)
    logits, values, _, h = self._forward(tokens, attention_mask, 0, None)
    return logits, values, h

  def extend(self, tokens, key_mask, index, cache):
    """Runs tokens [B, T] at slots index..index+T-1; `key_mask` [B, S] marks real slots (S = T
    without a cache, the cache length with one). Returns (logits, values, updated cache)."""
    return self._forward(tokens, key_mask, index, cache)[:3]

  def _forward(self, tokens, key_mask, index, cache):
    """`extend`'s pass; returns (logits, values, updated cache, last hidden state [B, T, D])."""
    c = self.config
    real_before = jnp.cumsum(key_mask.astype(jnp.int32), axis=1)  # [B, S]
    slots = index + jnp.arange(tokens.shape[1])
    positions = jnp.clip(jnp.take(real_before, slots, axis=1) - 1, 0, c.max_len - 1)
    x = self.embed(tokens) + self.pos_embed(positions)
    new_k, new_v = [], []
    for i, block in enumerate(self.blocks):
      layer_cache = None if cache is None else (cache.keys[i], cache.values[i])
      x, layer_cache = block(x, key_mask, index, layer_cache)
      if cache is not None:
        new_k.append(layer_cache[0])
        new_v.append(layer_cache[1])
    h = self.ln_final(x)
    logits = self.embed.attend(h) if c.tie_embeddings else self.head(h)
    values = self.value(h)[..., 0] if c.value_head else None
    new_cache = None if cache is None else KVCache(jnp.stack(new_k), jnp.stack(new_v))
    return logits, values, new_cache, h


def _concrete(x) -> Optional[np.ndarray]:
  """`x` as a numpy array, or None if it is a tracer (values are unknown under jit/vmap)."""
  if isinstance(x, jax.core.Tracer):
    return None
  return np.asarray(x)


def check_config(config: TransformerConfig) -> None:
  """Raises ValueError naming the bad field of `config`."""
  if not isinstance(config, TransformerConfig):
    raise ValueError(f"`config` must be a TransformerConfig, got {type(config).__name__}.")
  for name in ("vocab_size", "max_len", "d_model", "num_layers", "num_heads", "mlp_ratio"):
    value = getattr(config, name)
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"`config.{name}` must be a positive int, got {value!r}.")
  if config.d_model % config.num_heads:
    raise ValueError(f"`config.d_model` ({config.d_model}) must be divisible by "
                     f"`config.num_heads` ({config.num_heads}).")


def check_tokens(name: str, tokens, config: TransformerConfig, *, max_len=None) -> None:
  """Checks int tokens [B, T] with T <= max_len (default config.max_len) and, when the values are
  concrete (outside jit), ids in [0, vocab_size). Raises ValueError naming `name`."""
  validation.check_array(name, tokens, ndim=2, kind="int")
  max_len = config.max_len if max_len is None else max_len
  if tokens.shape[1] > max_len:
    raise ValueError(f"`{name}` has {tokens.shape[1]} tokens, more than the {max_len} positions "
                     f"allowed (config.max_len = {config.max_len}).")
  values = _concrete(tokens)
  if values is not None and values.size and (values.min() < 0 or values.max() >= config.vocab_size):
    raise ValueError(f"`{name}` holds ids in [{values.min()}, {values.max()}], outside "
                     f"[0, vocab_size = {config.vocab_size}).")


def _check_mask(name: str, mask, shape) -> None:
  validation.check_array(name, mask, ndim=2, kind="number")
  validation.check_shape(name, mask, shape)


def init_params(key: Array, config: TransformerConfig):
  """Initial parameters (a plain pytree of arrays) for `config`, from the PRNG `key`."""
  check_config(config)
  dummy = jnp.zeros((1, 1), jnp.int32)
  return jax.jit(lambda k: TransformerLM(config).init(k, dummy)["params"])(key)


def apply(params, config: TransformerConfig, tokens: Array,
          attention_mask: Optional[Array] = None) -> Tuple[Array, Optional[Array]]:
  """The full (uncached) forward pass.

  Args:
    params: from `init_params`.
    config: the model's TransformerConfig.
    tokens: [B, T] int token ids, T <= config.max_len.
    attention_mask: [B, T], 1 for real tokens, 0 for padding; None means all real.

  Returns:
    logits [B, T, V] (row t predicts token t + 1) and values [B, T] (None without a value head).
  """
  check_config(config)
  check_tokens("tokens", tokens, config)
  if attention_mask is not None:
    _check_mask("attention_mask", attention_mask, tokens.shape)
  return TransformerLM(config).apply({"params": params}, tokens, attention_mask)


def apply_with_hidden(params, config: TransformerConfig, tokens: Array,
                      attention_mask: Optional[Array] = None
                      ) -> Tuple[Array, Optional[Array], Array]:
  """`apply` plus the last hidden state: (logits [B, T, V], values [B, T] or None, hidden [B, T, D]).

  `hidden` is the output of the final LayerNorm, the features the output head (and the value head)
  read; a value head on a frozen model or CAPO's last-layer model takes it. Arguments as in `apply`.
  """
  check_config(config)
  check_tokens("tokens", tokens, config)
  if attention_mask is not None:
    _check_mask("attention_mask", attention_mask, tokens.shape)
  return TransformerLM(config).apply({"params": params}, tokens, attention_mask,
                                     method=TransformerLM.with_hidden)


def token_logp_and_entropy(params, config: TransformerConfig, tokens: Array,
                           attention_mask: Optional[Array] = None) -> Tuple[Array, Array]:
  """Log-probs of tokens[:, 1:] given their prefixes and the entropy of each predictive softmax.

  Args:
    params, config: the model.
    tokens: [B, T] int token ids.
    attention_mask: [B, T], 1 for real tokens (None: all real).

  Returns:
    logp [B, T-1]: log pi(tokens[:, t+1] | tokens[:, :t+1]), and entropy [B, T-1] of that
    distribution. Differentiable in `params`; the caller masks prompt and padding.
  """
  logits, _ = apply(params, config, tokens, attention_mask)
  logp_all = jax.nn.log_softmax(logits[:, :-1], axis=-1)
  logp = jnp.take_along_axis(logp_all, tokens[:, 1:, None], axis=-1)[..., 0]
  entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
  return logp, entropy


def init_cache(config: TransformerConfig, batch: int, max_len: int) -> KVCache:
  """Zero keys/values for `batch` sequences of `max_len` slots (max_len <= config.max_len)."""
  check_config(config)
  for name, value in (("batch", batch), ("max_len", max_len)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
  if max_len > config.max_len:
    raise ValueError(f"`max_len` ({max_len}) exceeds config.max_len ({config.max_len}).")
  shape = (config.num_layers, batch, max_len, config.num_heads, config.d_model // config.num_heads)
  return KVCache(jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32))


def _check_cache(cache, batch: int) -> int:
  if not isinstance(cache, KVCache):
    raise ValueError(f"`cache` must be a KVCache from init_cache, got {type(cache).__name__}.")
  if cache.keys.ndim != 5 or cache.keys.shape[1] != batch:
    raise ValueError(f"`cache` must hold {batch} sequences, got keys of shape {cache.keys.shape}.")
  return cache.keys.shape[2]


def prefill(params, config: TransformerConfig, tokens: Array, attention_mask: Array,
            cache: KVCache) -> Tuple[Array, Optional[Array], KVCache]:
  """Runs a prompt through the model and writes its keys/values into slots 0..P-1 of `cache`.

  Args:
    params, config: the model.
    tokens: [B, P] int prompt ids (left-padded).
    attention_mask: [B, S] real-slot mask over all S cache slots (entries >= P are ignored here).
    cache: a KVCache of S >= P slots.

  Returns:
    logits [B, P, V], values [B, P] (or None), and the filled cache; equal to `apply` on the prompt.
  """
  check_config(config)
  validation.check_array("tokens", tokens, ndim=2, kind="int")
  s = _check_cache(cache, tokens.shape[0])
  check_tokens("tokens", tokens, config, max_len=s)
  _check_mask("attention_mask", attention_mask, (tokens.shape[0], s))
  return TransformerLM(config).apply({"params": params}, tokens, attention_mask, 0, cache,
                                     method=TransformerLM.extend)


def decode_step(params, config: TransformerConfig, token: Array, position, cache: KVCache,
                attention_mask_so_far: Array) -> Tuple[Array, Optional[Array], KVCache]:
  """Feeds one token per sequence at cache slot `position`, attending to slots 0..position.

  Args:
    params, config: the model.
    token: [B] int ids of the tokens at slot `position`.
    position: scalar int (may be traced), the slot of `token` in the cache (not the positional
      embedding index, which counts real tokens; see the module docstring).
    cache: a KVCache of S slots with slots < position filled (by `prefill` or earlier steps).
    attention_mask_so_far: [B, S], 1 for real slots; entries after `position` are ignored, and
      the entry at `position` should be 1 (the positional index counts it).

  Returns:
    logits [B, V] predicting the next token, value [B] (or None), and the updated cache.
  """
  check_config(config)
  validation.check_array("token", token, ndim=1, kind="int")
  s = _check_cache(cache, token.shape[0])
  _check_mask("attention_mask_so_far", attention_mask_so_far, (token.shape[0], s))
  check_tokens("token", token[:, None], config, max_len=s)
  logits, values, cache = TransformerLM(config).apply(
      {"params": params}, token[:, None], attention_mask_so_far, position, cache,
      method=TransformerLM.extend)
  return logits[:, 0], (None if values is None else values[:, 0]), cache
