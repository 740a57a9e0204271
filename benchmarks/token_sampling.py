"""Autoregressive sampling throughput: KV-cached vs uncached `pgx_lab.models.sampling.sample`.

    python -m benchmarks.token_sampling [--batch=64] [--prompt-len=16] [--new-tokens=32,128] \
        [--sizes=small,medium] [--repeats=3] [--budget-s=15]

For each model size and number of new tokens N, both paths are jitted on the same params and the
same prompts (left-padded, random lengths); each is compiled ahead of time (`lower().compile()`,
its compile time is reported apart), called once to warm up, then timed
up to `repeats` times (fewer once `--budget-s` seconds are spent: an uncached call of the medium
model takes about a minute on 2 CPU cores), every call ended by `block_until_ready`. Reported: new tokens per second (batch * N / median seconds per call) and
the ratio cached / uncached, and the fraction of rows whose sampled tokens agree between the two
paths (same key; 1.0 unless float rounding flips a near-tied draw).

The cached path runs the prompt once and then one single-token decode step per new token, each
attending to the P + N cache slots; the uncached path reruns the full forward over the whole
[B, P + N] buffer at every step (static shapes inside `lax.scan`), so its cost grows like N^2
against N for the cache.

Sizes (vocabulary 64, 4 heads, MLP ratio 4, value head):
  small   d_model 64,  2 layers
  medium  d_model 128, 4 layers
"""

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from pgx_lab.models import sampling
from pgx_lab.models import transformer

VOCAB = 64
SIZES = {"small": dict(d_model=64, num_layers=2), "medium": dict(d_model=128, num_layers=4)}


def _prompts(batch: int, prompt_len: int, seed: int = 0):
  """Random left-padded prompts [B, P] with real lengths in [P/2, P]."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(max(1, prompt_len // 2), prompt_len + 1, size=batch)
  mask = (np.arange(prompt_len)[None, :] >= prompt_len - lengths[:, None]).astype(np.int32)
  tokens = rng.integers(0, VOCAB, (batch, prompt_len)).astype(np.int32) * mask
  return jnp.asarray(tokens), jnp.asarray(mask)


def _measure(call, repeats: int, budget_s: float):
  """Runs `call` once (warm-up, its output kept), then up to `repeats` timed calls, stopping early
  once `budget_s` seconds have been spent. Returns (output, median seconds, number of timed calls);
  when even the warm-up exceeded the budget, its own time (compilation excluded, done before) is
  the one sample (0 timed calls)."""
  start = time.perf_counter()
  output = jax.block_until_ready(call())
  first = time.perf_counter() - start
  times = []
  spent = first
  while len(times) < repeats and spent + (times[-1] if times else first) <= budget_s:
    start = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
    spent += times[-1]
  return output, statistics.median(times or [first]), len(times)


def rows(batch: int = 64, prompt_len: int = 16, new_tokens=(32, 128), sizes=("small", "medium"),
         repeats: int = 3, budget_s: float = 15.0):
  """Measures cached and uncached sampling throughput.

  Args:
    batch: sequences sampled per call B.
    prompt_len: prompt slots P (left-padded).
    new_tokens: the numbers of new tokens N to measure.
    sizes: names in SIZES.
    repeats: timed calls per path (the median is reported), after one warm-up call.
    budget_s: seconds per path and row after which no further timed call starts (slow uncached
      calls on a CPU then get fewer repeats; the row says how many).

  Returns:
    a list of dicts, one per (size, N): size, d_model, num_layers, batch, prompt_len, new_tokens,
    cached_s and uncached_s (median seconds per call), cached_calls and uncached_calls (timed
    calls), cached_compile_s and uncached_compile_s, cached_tok_s and uncached_tok_s (new tokens per second), ratio (cached_tok_s /
    uncached_tok_s), same_rows (fraction of rows sampled identically by both paths), device.
  """
  for name in sizes:
    if name not in SIZES:
      raise ValueError(f"unknown size {name!r} in `sizes`; expected one of {tuple(SIZES)}.")
  prompt, mask = _prompts(batch, prompt_len)
  compile_s = {}
  out = []
  for name in sizes:
    config = transformer.TransformerConfig(vocab_size=VOCAB, max_len=prompt_len + max(new_tokens),
                                           num_heads=4, **SIZES[name])
    params = transformer.init_params(jax.random.PRNGKey(0), config)
    for n in new_tokens:
      key = jax.random.PRNGKey(n)
      res = {}
      for c in (True, False):
        start = time.perf_counter()
        compiled = jax.jit(lambda p, k, pr, m, c=c: sampling.sample(
            p, config, k, pr, m, n, use_cache=c)).lower(params, key, prompt, mask).compile()
        compile_s[c] = time.perf_counter() - start
        res[c] = _measure(lambda: compiled(params, key, prompt, mask), repeats, budget_s)
      same = float(np.mean(np.all(np.asarray(res[True][0].response)
                                  == np.asarray(res[False][0].response), axis=1)))
      (_, cached_s, cached_calls), (_, uncached_s, uncached_calls) = res[True], res[False]
      out.append(dict(size=name, d_model=config.d_model, num_layers=config.num_layers,
                      batch=batch, prompt_len=prompt_len, new_tokens=n,
                      cached_s=cached_s, uncached_s=uncached_s, cached_calls=cached_calls,
                      uncached_calls=uncached_calls,
                      cached_tok_s=batch * n / cached_s, uncached_tok_s=batch * n / uncached_s,
                      ratio=uncached_s / cached_s, same_rows=same,
                      cached_compile_s=compile_s[True], uncached_compile_s=compile_s[False],
                      device=jax.devices()[0].device_kind))
  return out


def markdown(table) -> str:
  """The rows as a markdown table."""
  lines = ["| model | d_model x layers | B | P | N | cached tok/s | uncached tok/s | cached/uncached | same rows | calls |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in table:
    lines.append(f"| {r['size']} | {r['d_model']} x {r['num_layers']} | {r['batch']} | "
                 f"{r['prompt_len']} | {r['new_tokens']} | {r['cached_tok_s']:,.0f} | "
                 f"{r['uncached_tok_s']:,.0f} | {r['ratio']:.2f}x | {r['same_rows']:.2f} | "
                 f"{r['cached_calls']}/{r['uncached_calls']} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--prompt-len", type=int, default=16)
  parser.add_argument("--new-tokens", default="32,128")
  parser.add_argument("--sizes", default="small,medium")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--budget-s", type=float, default=15.0)
  args = parser.parse_args()
  table = rows(args.batch, args.prompt_len, tuple(int(x) for x in args.new_tokens.split(",")),
               tuple(args.sizes.split(",")), args.repeats, args.budget_s)
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({platform.machine()}, "
        f"{os.cpu_count()} CPUs), median of up to {args.repeats} timed calls after a warm-up "
        f"call (calls: timed calls cached/uncached)\n")
  print(markdown(table))


if __name__ == "__main__":
  main()
