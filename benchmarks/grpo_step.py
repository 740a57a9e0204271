"""Framework overhead of a GRPO update step on the transformer: pgx_lab against hand-written JAX.

    python -m benchmarks.grpo_step [--sizes=small,medium] [--repeats=15] \
        [--out=results/bench/grpo_step.json]

One update step on one batch of B = 64 sequences (8 prompts x G = 8 responses, prompt 16 tokens,
response 48 tokens with lengths uniform in [12, 48] and padding after), vocabulary 256:
  pgx_lab  `train.make_update_step(loss_fn, loop.make_optimizer(lr, 1.0))`, the jitted step of
           `pgx_lab.train.loop_tokens`: `rollout.sequences.response_logp` (log-probs and
           entropies of the response tokens) into `estimators.presets.grpo("grpo",
           kl_beta=0.04)` (Shao et al. 2024, eq. 3: group-normalised advantage, token clip
           0.2, k3 KL, per-sequence token mean), its metrics, the grad norm, Adam with global-norm
           clipping, TrainState with its PRNG split and step counter.
  plain    a minimal hand-written `jax.jit` step of the same maths: the same flax transformer
           (`models.transformer.apply`), log_softmax and gather of the taken tokens, group
           mean/std by reshape [8, 8], ratio, clip, k3 KL, per-sequence token mean, `jax.grad`,
           the same optax chain; it returns the new params, optimizer state and loss only.
The model is the same on both sides (it is not the framework); what differs is everything around
it. Sizes: small (d_model 64, 2 layers, 4 heads: 0.14 M parameters) and medium (d_model 256,
4 layers, 8 heads: 3.3 M parameters). Before timing, one step of each from the same state is
checked to give the same loss and the same new params (`assert_allclose`, rtol 1e-4).

Timed as `benchmarks/estimators.py` times: compiled, warmed up, then `--repeats` round-robin
rounds; the figure is the median over rounds of the per-round ratio of times pgx_lab / plain
(1.00 = no overhead; the goal is under 1.05). Tokens per second count the response tokens
(B x 48 per step), padding included.
"""

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common
from benchmarks.estimators import time_round_robin
from pgx_lab import types
from pgx_lab.estimators import presets
from pgx_lab.models import transformer
from pgx_lab.rollout import sequences
from pgx_lab.train import loop
from pgx_lab.train.state import TrainState
from pgx_lab.train.update import make_update_step

PROMPTS, GROUP, PROMPT_LEN, RESPONSE_LEN, VOCAB = 8, 8, 16, 48, 256
EPS, KL_BETA, STD_EPS, LR = 0.2, 0.04, 1e-6, 1e-4
SIZES = {
    "small": dict(d_model=64, num_layers=2, num_heads=4),
    "medium": dict(d_model=256, num_layers=4, num_heads=8),
}


def make_model(size: str) -> transformer.TransformerConfig:
  return transformer.TransformerConfig(vocab_size=VOCAB, max_len=PROMPT_LEN + RESPONSE_LEN,
                                       value_head=False, **SIZES[size])


def make_data(key, model):
  """A sampled-looking batch: tokens, masks, behaviour/reference log-probs near the policy's."""
  b = PROMPTS * GROUP
  k_tok, k_len, k_rew, k_old, k_ref = jax.random.split(key, 5)
  tokens = jax.random.randint(k_tok, (b, PROMPT_LEN + RESPONSE_LEN), 0, VOCAB)
  lengths = jax.random.randint(k_len, (b,), RESPONSE_LEN // 4, RESPONSE_LEN + 1)
  mask = (jnp.arange(RESPONSE_LEN)[None] < lengths[:, None]).astype(jnp.float32)
  attention = jnp.concatenate([jnp.ones((b, PROMPT_LEN), jnp.float32), mask], axis=1)
  rewards = jax.random.bernoulli(k_rew, 0.4, (b,)).astype(jnp.float32)
  params = transformer.init_params(jax.random.PRNGKey(1), model)
  logp, _ = sequences.response_logp(params, model, tokens, PROMPT_LEN, attention)
  old = logp + 0.05 * jax.random.normal(k_old, logp.shape)
  ref = logp + 0.05 * jax.random.normal(k_ref, logp.shape)
  batch = types.SequenceBatch(mask=mask, old_logp=old, ref_logp=ref, rewards=rewards,
                              group_ids=jnp.repeat(jnp.arange(PROMPTS), GROUP), tokens=tokens)
  return params, {"batch": batch, "attention_mask": attention}


def pgx_step(model):
  """The pgx_lab step, built as `pgx_lab.train.loop_tokens` builds it."""
  estimator = presets.grpo("grpo", kl_beta=KL_BETA)

  def loss_fn(params, data, key):
    del key
    batch = data["batch"]
    logp, entropy = sequences.response_logp(params, model, batch.tokens, PROMPT_LEN,
                                            data["attention_mask"])
    return estimator(logp, batch, entropy=entropy)

  return make_update_step(loss_fn, loop.make_optimizer(LR, 1.0))


def plain_step(model, optimizer):
  """A minimal GRPO step written straight from the formulas."""

  def loss(params, data):
    batch = data["batch"]
    logits, _ = transformer.TransformerLM(model).apply({"params": params}, batch.tokens,
                                                        data["attention_mask"])
    logp_all = jax.nn.log_softmax(logits[:, PROMPT_LEN - 1:-1], axis=-1)
    logp = jnp.take_along_axis(logp_all, batch.tokens[:, PROMPT_LEN:, None], axis=-1)[..., 0]
    m = batch.mask
    r = batch.rewards.reshape(PROMPTS, GROUP)
    adv = ((r - r.mean(1, keepdims=True)) / (r.std(1, keepdims=True) + STD_EPS)).reshape(-1, 1)
    ratio = jnp.exp(jnp.where(m > 0, logp - batch.old_logp, 0.0))
    surrogate = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - EPS, 1 + EPS) * adv)
    kl = jnp.where(m > 0, batch.ref_logp - logp, 0.0)
    per_token = surrogate + KL_BETA * (jnp.exp(kl) - kl - 1.0)
    return jnp.mean(jnp.sum(per_token * m, axis=1) / jnp.sum(m, axis=1))

  @jax.jit
  def step(params, opt_state, data):
    value, grads = jax.value_and_grad(loss)(params, data)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  return step


def run_size(size: str, repeats: int, min_sample_s: float):
  model = make_model(size)
  params, data = make_data(jax.random.PRNGKey(0), model)
  optimizer = loop.make_optimizer(LR, 1.0)
  state = TrainState.create(params, optimizer, jax.random.PRNGKey(2))
  pgx = pgx_step(model)
  plain = plain_step(model, optimizer)
  n_params = sum(x.size for x in jax.tree.leaves(params))

  new_state, metrics = pgx(state, data)
  new_params, _, value = plain(params, state.opt_state, data)
  np.testing.assert_allclose(metrics["loss"], value, rtol=1e-4, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               new_state.params, new_params)

  fns = {"pgx_lab": lambda s, p, o, d: pgx(s, d), "plain": lambda s, p, o, d: plain(p, o, d)}
  _, times, first, inner = time_round_robin(fns, (state, params, state.opt_state, data),
                                            repeats, min_sample_s)
  ratios = [a / b for a, b in zip(times["pgx_lab"], times["plain"])]
  tokens = PROMPTS * GROUP * RESPONSE_LEN
  row = {
      "size": size, "params": int(n_params), "batch": PROMPTS * GROUP, "response_len": RESPONSE_LEN,
      "pgx_lab_ms": 1e3 * statistics.median(times["pgx_lab"]),
      "plain_ms": 1e3 * statistics.median(times["plain"]),
      "pgx_lab_tokens_per_s": tokens / statistics.median(times["pgx_lab"]),
      "plain_tokens_per_s": tokens / statistics.median(times["plain"]),
      "overhead_ratio": statistics.median(ratios),
      "ratio_quartiles": [float(np.percentile(ratios, 25)), float(np.percentile(ratios, 75))],
      "first_call_s": first, "calls_per_sample": inner, "times_s": times,
  }
  print(f"  {size:6s} {n_params / 1e6:5.2f} M params  pgx_lab {row['pgx_lab_ms']:8.2f} ms  "
        f"plain {row['plain_ms']:8.2f} ms  ratio {row['overhead_ratio']:.3f}", flush=True)
  return row


def markdown_table(rows):
  lines = ["| size | params | pgx_lab ms | plain ms | pgx_lab k tokens/s | plain k tokens/s "
           "| pgx_lab / plain time (quartiles) |", "|---|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    q = r["ratio_quartiles"]
    lines.append(f"| {r['size']} | {r['params'] / 1e6:.2f} M | {r['pgx_lab_ms']:.2f} "
                 f"| {r['plain_ms']:.2f} | {r['pgx_lab_tokens_per_s'] / 1e3:.1f} "
                 f"| {r['plain_tokens_per_s'] / 1e3:.1f} | {r['overhead_ratio']:.3f} "
                 f"({q[0]:.3f}-{q[1]:.3f}) |")
  return "\n".join(lines)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  p.add_argument("--sizes", default="small,medium", help=f"comma list of {tuple(SIZES)}")
  p.add_argument("--repeats", type=int, default=15, help="timed rounds (median)")
  p.add_argument("--min-sample-ms", type=float, default=50.0,
                 help="a sample repeats the step until it lasts this long")
  p.add_argument("--out", default="results/bench/grpo_step.json", help="JSON output path")
  args = p.parse_args(argv)
  args.sizes = [s for s in args.sizes.split(",") if s]
  for s in args.sizes:
    if s not in SIZES:
      p.error(f"unknown size {s!r}; expected one of {tuple(SIZES)}")
  if args.repeats < 1:
    p.error("--repeats must be >= 1")
  return args


def main(argv=None):
  args = parse_args(argv)
  start, load_before = time.perf_counter(), os.getloadavg()
  rows = [run_size(s, args.repeats, args.min_sample_ms / 1e3) for s in args.sizes]
  elapsed, load_after = time.perf_counter() - start, os.getloadavg()
  table = markdown_table(rows)
  common.print_table(table, elapsed, load_before, load_after)
  common.write_json(args.out, {
      "machine": {"nproc": os.cpu_count(), "cpu": common.cpu_model(), "jax": jax.__version__,
                  "backend": jax.default_backend()},
      "repeats": args.repeats, "rows": rows, "wall_s": elapsed, "load_before": load_before,
      "load_after": load_after, "table": table})


if __name__ == "__main__":
  main()
