"""Autoregressive sampling from `transformer.TransformerLM` with `lax.scan`, and logit filters.

`sample` draws `max_new_tokens` tokens after a left-padded prompt. Each step takes the next-token
logits z, and samples from softmax(filter(z / temperature)) where the filters are applied in the
order temperature, top-k, top-p (the order of Hugging Face's `generate`):
  - top-k (Fan et al. 2018, "Hierarchical Neural Story Generation"): keep exactly the k largest
    logits (ties broken towards the lower id);
  - top-p, nucleus sampling (Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration"):
    keep the smallest set of most probable tokens whose total probability is >= p;
  - temperature 0 means greedy decoding (argmax of z), the limit of temperature -> 0.

Two log-probs are returned per token, because estimators and importance weights need different
ones:
  - `response_logp`: log pi(y_t | prefix) under the model itself, temperature 1 and no filtering.
    This is what `transformer.token_logp_and_entropy` recomputes from the full sequence, i.e. the
    `old_logp` of an on-policy estimator.
  - `sampling_logp`: log q(y_t | prefix) under the distribution actually sampled from (tempered
    and filtered); 0 for greedy decoding. Use it when the behaviour policy q must be exact.
`response_entropy` is the entropy of the temperature-1 unfiltered pi (as `token_logp_and_entropy`).

With `use_cache=True` the prompt is run once (`prefill`) and each new token costs one
`decode_step`; with `use_cache=False` each step reruns the full forward over the whole
[B, P + N] buffer (later slots hold placeholders that causality hides), the baseline of
`benchmarks/token_sampling.py`.
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from pgx_lab import validation
from pgx_lab.models import transformer

Array = jax.Array


class SampleOutput(NamedTuple):
  """What `sample` returns (B sequences, P prompt slots, N new tokens).

  Attributes:
    tokens: [B, P + N] int32 prompt followed by the response.
    response: [B, N] int32 sampled tokens; after the first `eos_id` every token is `eos_id`.
    response_logp: [B, N] log-prob of each response token under the temperature-1 unfiltered model.
    response_mask: [B, N] float32, 1 up to and including the first `eos_id`, 0 after.
    response_entropy: [B, N] entropy of the temperature-1 unfiltered next-token distribution.
    sampling_logp: [B, N] log-prob under the tempered, filtered distribution actually sampled
      from (0 for greedy decoding).
    response_values: [B, N] value-head output at the state before each response token
      (None without a value head).
  """

  tokens: Array
  response: Array
  response_logp: Array
  response_mask: Array
  response_entropy: Array
  sampling_logp: Array
  response_values: Optional[Array] = None


def top_k_filter(logits: Array, k: int) -> Array:
  """Keeps exactly the `k` largest logits on the last axis and sets the others to -inf.

  Args:
    logits: [..., V] float logits.
    k: static int in [1, V]; ties at the k-th value are broken towards the lower index.
  """
  validation.check_array("logits", logits, kind="float")
  if not isinstance(k, (int, np.integer)) or not 1 <= k <= logits.shape[-1]:
    raise ValueError(f"`top_k` must be an int in [1, {logits.shape[-1]}], got {k!r}.")
  _, idx = jax.lax.top_k(logits, k)
  keep = jnp.put_along_axis(jnp.zeros(logits.shape, bool), idx, True, axis=-1, inplace=False)
  return jnp.where(keep, logits, -jnp.inf)


def top_p_filter(logits: Array, p: float) -> Array:
  """Nucleus filter: keeps the smallest set of most probable tokens with total probability >= p.

  A token is kept iff the probability of the tokens ranked strictly above it is < p, so the most
  probable token is always kept (Holtzman et al. 2020, eq. 2-3).

  Args:
    logits: [..., V] float logits (may hold -inf, e.g. after `top_k_filter`).
    p: float in (0, 1]; 1 keeps every token of nonzero probability.
  """
  validation.check_array("logits", logits, kind="float")
  if isinstance(p, (int, float)) and not 0.0 < p <= 1.0:
    raise ValueError(f"`top_p` must be in (0, 1], got {p!r}.")
  order = jnp.argsort(-logits, axis=-1, stable=True)
  probs = jax.nn.softmax(jnp.take_along_axis(logits, order, axis=-1), axis=-1)
  mass_above = jnp.cumsum(probs, axis=-1) - probs
  keep_sorted = (mass_above < p) & (probs > 0)
  keep_sorted = keep_sorted.at[..., 0].set(True)
  keep = jnp.put_along_axis(jnp.zeros(logits.shape, bool), order, keep_sorted, axis=-1,
                            inplace=False)
  return jnp.where(keep, logits, -jnp.inf)


def sampling_logits(logits: Array, *, temperature: float = 1.0, top_k: Optional[int] = None,
                    top_p: Optional[float] = None) -> Array:
  """The logits of the distribution `sample` draws from: logits / temperature, then top-k, top-p.

  Args:
    logits: [..., V] float model logits.
    temperature: > 0 (temperature 0, greedy, has no logits; `sample` handles it).
    top_k: None or a static int in [1, V].
    top_p: None or a float in (0, 1].
  """
  z = logits / temperature
  if top_k is not None:
    z = top_k_filter(z, top_k)
  if top_p is not None:
    z = top_p_filter(z, top_p)
  return z


def _choose(key, logits, temperature, top_k, top_p):
  """Samples one token per row: returns (token [B], sampling log-prob [B])."""
  if isinstance(temperature, (int, float)) and temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32), jnp.zeros(logits.shape[:-1])
  z = jax.nn.log_softmax(sampling_logits(logits, temperature=temperature, top_k=top_k,
                                         top_p=top_p), axis=-1)
  token = jax.random.categorical(key, z, axis=-1).astype(jnp.int32)
  return token, jnp.take_along_axis(z, token[:, None], axis=-1)[:, 0]


def _check_sample_args(config, prompt, prompt_mask, max_new_tokens, temperature, top_k, top_p,
                       eos_id):
  transformer.check_config(config)
  transformer.check_tokens("prompt", prompt, config)
  validation.check_array("prompt_mask", prompt_mask, ndim=2, kind="number")
  validation.check_shape("prompt_mask", prompt_mask, prompt.shape, against="prompt")
  if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
    raise ValueError(f"`max_new_tokens` must be a positive int, got {max_new_tokens!r}.")
  if prompt.shape[1] < 1:
    raise ValueError("`prompt` must have at least one slot.")
  if prompt.shape[1] + max_new_tokens > config.max_len:
    raise ValueError(f"`prompt` length {prompt.shape[1]} + `max_new_tokens` {max_new_tokens} "
                     f"exceeds config.max_len = {config.max_len}.")
  if isinstance(temperature, (int, float)) and temperature < 0:
    raise ValueError(f"`temperature` must be >= 0, got {temperature!r}.")
  if top_k is not None and (not isinstance(top_k, (int, np.integer))
                            or not 1 <= top_k <= config.vocab_size):
    raise ValueError(f"`top_k` must be None or an int in [1, {config.vocab_size}], got {top_k!r}.")
  if top_p is not None and isinstance(top_p, (int, float)) and not 0.0 < top_p <= 1.0:
    raise ValueError(f"`top_p` must be None or in (0, 1], got {top_p!r}.")
  if eos_id is not None and (not isinstance(eos_id, (int, np.integer))
                             or not 0 <= eos_id < config.vocab_size):
    raise ValueError(f"`eos_id` must be None or an int in [0, {config.vocab_size}), got {eos_id!r}.")
  mask = transformer._concrete(prompt_mask)  # pylint: disable=protected-access
  if mask is not None and mask.size and not np.all(mask[:, -1] > 0):
    raise ValueError("`prompt_mask` must mark the last prompt slot as real: prompts are "
                     "left-padded (padding first, then the prompt).")


def sample(params, config: transformer.TransformerConfig, key: Array, prompt: Array,
           prompt_mask: Array, max_new_tokens: int, *, temperature: float = 1.0,
           top_k: Optional[int] = None, top_p: Optional[float] = None,
           eos_id: Optional[int] = None, use_cache: bool = True) -> SampleOutput:
  """Samples `max_new_tokens` tokens after each prompt with `lax.scan`.

  Jit with `config`, `max_new_tokens`, `temperature`, `top_k`, `top_p`, `eos_id` and `use_cache`
  static; vmap over `key` (and prompts) freely.

  Args:
    params, config: the model (`transformer.init_params`).
    key: PRNG key.
    prompt: [B, P] int prompt ids, left-padded; P + max_new_tokens <= config.max_len.
    prompt_mask: [B, P], 1 for real prompt tokens, 0 for the left padding; the last slot is real.
    max_new_tokens: static int N >= 1.
    temperature: >= 0, a static Python number (a traced value must be > 0); 0 means greedy
      decoding (argmax; top_k and top_p, which always keep the argmax, are then moot).
    top_k: None or a static int in [1, V]: keep the k largest logits.
    top_p: None or a float in (0, 1]: nucleus sampling.
    eos_id: None or a static int: the end-of-sequence token; after it the response is masked and
      filled with eos_id (the model still runs on those slots; their log-probs are those of
      eos_id, masked out).
    use_cache: use the KV cache (True) or rerun the full forward each step (False).

  Returns:
    a SampleOutput (see its docstring for which log-prob is which).
  """
  _check_sample_args(config, prompt, prompt_mask, max_new_tokens, temperature, top_k, top_p,
                     eos_id)
  b, p = prompt.shape
  n = max_new_tokens
  s = p + n
  prompt = prompt.astype(jnp.int32)
  mask = jnp.concatenate([prompt_mask.astype(jnp.int32), jnp.ones((b, n), jnp.int32)], axis=1)
  buffer = jnp.concatenate([prompt, jnp.zeros((b, n), jnp.int32)], axis=1)
  model = transformer.TransformerLM(config)
  variables = {"params": params}

  def full_forward_at(buf, slot):
    """Uncached: logits and value at `slot` from the full forward over the whole buffer."""
    logits, values = model.apply(variables, buf, mask)
    pick = lambda x: jax.lax.dynamic_index_in_dim(x, slot, axis=1, keepdims=False)
    return pick(logits), (None if values is None else pick(values))

  if use_cache:
    cache = transformer.init_cache(config, b, s)
    logits, values, cache = transformer.prefill(params, config, prompt, mask, cache)
    first_logits, first_value = logits[:, -1], (None if values is None else values[:, -1])
  else:
    cache = None
    first_logits, first_value = full_forward_at(buffer, p - 1)

  def step(carry, inputs):
    buf, cache, logits, value, done = carry
    t, step_key = inputs
    token, q_logp = _choose(step_key, logits, temperature, top_k, top_p)
    if eos_id is not None:
      token = jnp.where(done, eos_id, token)
    logp_all = jax.nn.log_softmax(logits, axis=-1)
    logp = jnp.take_along_axis(logp_all, token[:, None], axis=-1)[:, 0]
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    valid = ~done
    if eos_id is not None:
      done = done | (token == eos_id)
    buf = jax.lax.dynamic_update_index_in_dim(buf, token, p + t, axis=1)
    if use_cache:
      new_logits, new_value, cache = transformer.decode_step(params, config, token, p + t, cache,
                                                             mask)
    else:
      new_logits, new_value = full_forward_at(buf, p + t)
    out = (token, logp, valid.astype(jnp.float32), entropy, q_logp,
           jnp.zeros((b,)) if value is None else value)
    return (buf, cache, new_logits, new_value, done), out

  keys = jax.random.split(key, n)
  init = (buffer, cache, first_logits, first_value, jnp.zeros((b,), bool))
  (buffer, *_), outs = jax.lax.scan(step, init, (jnp.arange(n), keys))
  response, logp, valid, entropy, q_logp, values = (jnp.moveaxis(x, 0, 1) for x in outs)
  return SampleOutput(tokens=buffer, response=response, response_logp=logp,
                      response_mask=valid, response_entropy=entropy, sampling_logp=q_logp,
                      response_values=values if config.value_head else None)
