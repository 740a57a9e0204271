"""A small causal transformer policy for the mcts_dpo chain-of-digits task (private helper).

The third policy of `experiments/papers/mcts_dpo.py`, the reading closest to the paper's LLM
(Xie et al. 2024, arXiv 2405.00451, fine-tune a decoder-only LM): `pgx_lab.models.transformer`
(GPT-style pre-LayerNorm decoder) reads the sequence [prompt token, y_0, ..., y_{T-1}], the
prompt token being V + g for the target g (vocabulary V digits + S + 1 target tokens, T + 1
positions). The next-digit distribution at position t is the softmax of the output head's first V
logits at sequence slot t (which, by the causal mask, sees only the prompt and y_<t); the running
sum is not an input, the model has to compute it from the digits.

Initialisation: the library's random init (normal(0.02) embeddings, lecun-normal dense layers),
except that the output head's kernel and bias are set to zero, so the policy starts exactly
uniform, as the tabular and MLP policies do; it is NOT pre-trained toward the task.

Exact accuracy and response entropy enumerate all V^T responses for every target in one batched
forward pass ((S + 1) V^T sequences of T + 1 tokens; 13 x 729 = 9477 for the module's task).
`token_logp` scores a full response with one forward pass (the base class runs one pass per
position); `logits` (used by sampling in the search) runs one pass per call.
"""

import jax
import jax.numpy as jnp

from experiments.papers._mcts_dpo_policies import Task
from experiments.papers._mcts_dpo_policies import _Policy
from pgx_lab import validation
from pgx_lab.models import transformer


class TransformerPolicy(_Policy):
  """Causal-transformer policy with the `_Policy` interface (module docstring)."""

  def __init__(self, task: Task, d_model: int = 32, num_layers: int = 2, num_heads: int = 4):
    """`task`: the `Task`; `d_model`, `num_layers`, `num_heads`: the transformer's sizes
    (positive ints, d_model divisible by num_heads; checked by `transformer.check_config`)."""
    if not isinstance(task, Task):
      raise ValueError(f"`task` must be a Task, got {type(task).__name__}.")
    super().__init__(task)
    self.config = transformer.TransformerConfig(
        vocab_size=task.v + task.s + 1, max_len=task.t + 1, d_model=d_model,
        num_layers=num_layers, num_heads=num_heads, mlp_ratio=4, value_head=False)
    transformer.check_config(self.config)

  def init(self, key):
    """Transformer params (a plain pytree) for PRNG `key`, the output head zeroed (uniform)."""
    params = transformer.TransformerLM(self.config).init(
        key, jnp.zeros((1, 1), jnp.int32))["params"]
    params = dict(params)
    params["head"] = jax.tree_util.tree_map(jnp.zeros_like, params["head"])
    return params

  def _check_row(self, tokens):
    """Raises ValueError naming `tokens` unless it is an int array [T]."""
    validation.check_array("tokens", tokens, ndim=1, kind="int")
    validation.check_shape("tokens", tokens, (self.task.t,))

  def sequences(self, target, tokens):
    """[..., T + 1] model input: prompt token V + target ([...] int) then the digits [..., T]."""
    prompt = (self.task.v + jnp.asarray(target, jnp.int32))[..., None]
    return jnp.concatenate([prompt, jnp.asarray(tokens, jnp.int32)], axis=-1)

  def _digit_logp(self, params, seqs):
    """[B, T, V] log pi(digit | prefix) at slots 0..T-1 of the sequences `seqs` [B, T + 1]."""
    logits, _ = transformer.apply(params, self.config, seqs)
    return jax.nn.log_softmax(logits[:, :self.task.t, :self.task.v], axis=-1)

  def logits(self, params, target, pos, running_sum, tokens):
    """[V] digit logits after the prefix tokens[:pos] of `tokens` [T] for `target` (scalar ints;
    `running_sum` is unused: the model reads the digits)."""
    del running_sum
    self._check_row(tokens)
    logits, _ = transformer.apply(params, self.config, self.sequences(target, tokens)[None])
    return logits[0, jnp.minimum(pos, self.task.t - 1), :self.task.v]

  def token_logp(self, params, tokens, target):
    """[T] log pi(y_t | g, y_<t) of a full response `tokens` [T] for `target`, one forward."""
    self._check_row(tokens)
    logp = self._digit_logp(params, self.sequences(target, tokens)[None])[0]
    return jnp.take_along_axis(logp, jnp.asarray(tokens, jnp.int32)[:, None], axis=-1)[:, 0]

  def response_logp(self, params):
    """[S+1, V^T] log pi(y | g) of every full response y (enumeration order) per target g."""
    full = jnp.asarray(self._prefixes[3])  # [V^T, T]
    n, g = full.shape[0], self.task.s + 1
    targets = jnp.repeat(jnp.arange(g), n)
    toks = jnp.tile(full, (g, 1))
    logp = self._digit_logp(params, self.sequences(targets, toks))  # [g n, T, V]
    per = jnp.take_along_axis(logp, toks[..., None], axis=-1)[..., 0].sum(-1)
    return per.reshape(g, n)

  def accuracy(self, params):
    """Exact success probability averaged over all targets (all V^T responses enumerated)."""
    full = self._prefixes[3]
    hit = jnp.asarray(full.sum(-1))[None, :] == jnp.arange(self.task.s + 1)[:, None]
    return jnp.mean(jnp.sum(jnp.exp(self.response_logp(params)) * hit, axis=-1))

