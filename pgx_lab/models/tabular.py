"""A tabular softmax policy over fixed-length token sequences: pi(y | x) = prod_t softmax(theta[x, t])[y_t]."""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from pgx_lab import validation

Array = jax.Array


class TabularSequencePolicy(NamedTuple):
  """Logits theta[C, L, V]; each position of each context has its own softmax."""

  num_contexts: int
  length: int
  vocab_size: int

  def init(self, key: Array, scale: float = 0.0) -> Array:
    """Initial logits; `scale` 0 gives the uniform policy."""
    return scale * jax.random.normal(key, (self.num_contexts, self.length, self.vocab_size))

  def logits(self, params: Array, contexts: Array) -> Array:
    """[B, L, V] logits for contexts [B]."""
    validation.check_array("contexts", contexts, ndim=1, kind="int")
    return params[contexts]

  def sample(self, params: Array, key: Array, contexts: Array) -> Array:
    """[B, L] int32 responses sampled from the policy."""
    return jax.random.categorical(key, self.logits(params, contexts)).astype(jnp.int32)

  def token_logp(self, params: Array, contexts: Array, responses: Array) -> Array:
    """[B, L] log pi_t(y_t | x)."""
    logp = jax.nn.log_softmax(self.logits(params, contexts), axis=-1)
    return jnp.take_along_axis(logp, responses[..., None], axis=-1)[..., 0]

  def token_entropy(self, params: Array, contexts: Array) -> Array:
    """[B, L] entropy of each position's softmax."""
    logp = jax.nn.log_softmax(self.logits(params, contexts), axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)

  def target_probs(self, params: Array, targets: Array) -> Array:
    """[C, L] pi_t(target_t | x) for every context, for exact expected rewards."""
    probs = jax.nn.softmax(params, axis=-1)
    return jnp.take_along_axis(probs, targets[..., None], axis=-1)[..., 0]
