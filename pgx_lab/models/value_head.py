"""A-LoL's value head: V(x) = max_value * sigmoid(w . AttnPool(h) + b) over a frozen model's
hidden states of the prompt.

Baheti et al., ICLR 2024, "Leftover Lunch: Advantage-based Offline Reinforcement Learning for
Language Models", and the authors' `ValueHeadAttention` (abaheti95/LoL-RL,
`utils/rl_utils.py`): one learned query vector attends (multi-head dot-product attention) over the
last-layer hidden states of the prompt, a linear layer maps the pooled vector to a scalar, and a
sigmoid times `max_value` bounds it to the reward range [0, max_value]. Differences here: a key
padding mask (the code attends to padding too), no dropout, and a small number of heads.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from pgx_lab import validation

Array = jax.Array


class AttentionValueHead(nn.Module):
  """`head.apply({"params": p}, hidden [B, T, D], mask [B, T]) -> values [B]` in (0, max_value).

  Attributes:
    num_heads: attention heads; D must be divisible by it.
    max_value: upper bound of the value (rewards scaled to [0, max_value]).
  """

  num_heads: int = 4
  max_value: float = 1.0

  @nn.compact
  def __call__(self, hidden: Array, mask: Array) -> Array:
    """Args: hidden [B, T, D] float hidden states; mask [B, T], 1 for real prompt tokens.

    A row with no real token attends uniformly to all positions (finite, meaningless).
    """
    validation.check_array("hidden", hidden, ndim=3)
    validation.check_array("mask", mask, ndim=2, kind="number")
    validation.check_shape("mask", mask, hidden.shape[:2], against="hidden[:, :, 0]")
    b, _, d = hidden.shape
    if d % self.num_heads:
      raise ValueError(f"`hidden` width {d} must be divisible by `num_heads` ({self.num_heads}).")
    query = self.param("query", nn.initializers.normal(1.0), (d,))
    q = jnp.broadcast_to(query, (b, 1, d)).astype(hidden.dtype)
    attn_mask = (mask > 0)[:, None, None, :]  # [B, heads (broadcast), 1 query, T keys]
    pooled = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, name="attn")(
        q, hidden, hidden, mask=attn_mask)  # [B, 1, D]
    logit = nn.Dense(1, name="summary")(pooled[:, 0])[:, 0]
    return self.max_value * jax.nn.sigmoid(logit)
