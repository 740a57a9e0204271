"""Group rollouts on token tasks: G sampled responses per prompt, scored by the task's reward.

    batch, extras = sample_groups(key, params, config, task, prompts, group_size=8,
                                  max_new_tokens=task.response_len, temperature=1.0)
    logp, entropy = response_logp(params, config, batch.tokens, prompt_len,
                                  extras["attention_mask"])
    loss, metrics = estimator(logp, batch, entropy=entropy)

The batch is response-aligned: with B = n * G rows, P prompt slots and N = max_new_tokens,
`mask`, `old_logp` are [B, N] (the estimator's T is N) while `tokens` is the full [B, P + N]
sequence the model reads; the prompt width is `P = tokens.shape[1] - mask.shape[1]`. Responses to
prompt i are the G consecutive rows [i * G, (i + 1) * G) and share group id i (GRPO, Shao et al.
2024; RLOO, Kool et al. 2019).
"""

from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from pgx_lab import types
from pgx_lab import validation
from pgx_lab.envs.token_tasks import prompts as prompts_lib
from pgx_lab.envs.token_tasks import vocab
from pgx_lab.models import sampling
from pgx_lab.models import transformer

Array = jax.Array


def sample_groups(key: Array, params: Any, config: transformer.TransformerConfig, task: Any,
                  prompts: prompts_lib.Prompts, group_size: int,
                  max_new_tokens: Optional[int] = None,
                  **sampling_kwargs) -> Tuple[types.SequenceBatch, Dict[str, Any]]:
  """Samples `group_size` responses to each prompt and scores them.

  Jit with `config`, `task`, `group_size`, `max_new_tokens` and the sampling options static.

  Args:
    key: PRNG key.
    params, config: the policy (`transformer.init_params`, a `TransformerConfig`).
    task: a token task (`pgx_lab.envs.token_tasks.make_task`); it supplies the reward.
    prompts: n `Prompts` of that task.
    group_size: G >= 1 responses per prompt.
    max_new_tokens: N, the response budget; None means `task.response_len` (the longest
      demonstration, answer + EOS). P + N must fit in `config.max_len`.
    **sampling_kwargs: temperature, top_k, top_p, use_cache of `models.sampling.sample`
      (generation stops at the vocabulary's EOS).

  Returns:
    batch: `SequenceBatch` with B = n * G rows: mask [B, N] (1 up to and including EOS),
      old_logp [B, N] (log-probs of the sampled tokens under the temperature-1 unfiltered policy,
      what `response_logp` recomputes at these params), rewards [B] float32, group_ids [B] int32,
      tokens [B, P + N] int32 (prompt then response).
    extras: dict with "prompts" (the repeated n * G `Prompts`), "response" [B, N],
      "attention_mask" [B, P + N] (the mask the sampler used; pass it to `response_logp`),
      "response_entropy" [B, N], "sampling_logp" [B, N] (log-probs under the tempered, filtered
      distribution actually sampled from; equal to old_logp at temperature 1 without filters),
      "response_values" [B, N] or None (value head at the state before each token).
  """
  prompts_lib.check_prompts(prompts)
  if "eos_id" in sampling_kwargs:
    raise ValueError("`eos_id` is fixed to the token vocabulary's EOS; do not pass it.")
  if max_new_tokens is None:
    max_new_tokens = task.response_len
  rep, group_ids = prompts_lib.repeat_for_groups(prompts, group_size)
  out = sampling.sample(params, config, key, rep.tokens, rep.mask, max_new_tokens,
                        eos_id=vocab.EOS, **sampling_kwargs)
  rewards = task.reward(rep, out.response, out.response_mask)
  attention_mask = jnp.concatenate(
      [rep.mask.astype(jnp.int32), jnp.ones(out.response.shape, jnp.int32)], axis=1)
  batch = types.SequenceBatch(mask=out.response_mask, old_logp=out.response_logp,
                              rewards=rewards.astype(jnp.float32), group_ids=group_ids,
                              tokens=out.tokens)
  extras = {"prompts": rep, "response": out.response, "attention_mask": attention_mask,
            "response_entropy": out.response_entropy, "sampling_logp": out.sampling_logp,
            "response_values": out.response_values}
  return batch, extras


def response_logp(params: Any, config: transformer.TransformerConfig, batch_tokens: Array,
                  prompt_len: int, attention_mask: Optional[Array] = None
                  ) -> Tuple[Array, Array]:
  """Differentiable log-probs and entropies of the response tokens (the estimator's `logp`).

  Args:
    params, config: the policy.
    batch_tokens: [B, P + N] int32 prompt-then-response tokens (`batch.tokens`).
    prompt_len: P, a static int in [1, P + N - 1] (`tokens.shape[1] - mask.shape[1]`).
    attention_mask: [B, P + N], 1 on real tokens (`extras["attention_mask"]`); None: all real
      (only right for unpadded prompts).

  Returns:
    logp [B, N]: log pi(y_t | prompt, y_<t) under the temperature-1 model, and entropy [B, N] of
    each predictive distribution. The caller masks tokens after EOS (`batch.mask`).
  """
  validation.check_array("batch_tokens", batch_tokens, ndim=2, kind="int")
  total = batch_tokens.shape[1]
  if (not isinstance(prompt_len, (int, np.integer)) or isinstance(prompt_len, bool)
      or not 1 <= prompt_len <= total - 1):
    raise ValueError(f"`prompt_len` must be an int in [1, {total - 1}] (batch_tokens has "
                     f"{total} columns), got {prompt_len!r}.")
  logp, entropy = transformer.token_logp_and_entropy(params, config, batch_tokens,
                                                     attention_mask)
  return logp[:, prompt_len - 1:], entropy[:, prompt_len - 1:]
