"""The CAPO step (curvature mask + GRPO update) over the plain GRPO step on the transformer.

    python -m benchmarks.capo [--sizes=128x64x2,256x128x4] [--repeats=15] [--min-sample-ms=50] \
        [--out=results/bench/capo.json]

A size is BxDxL: B sequences (16 prompts x 8 for B = 128) of the `reverse` task at difficulty 5
(prompt 8 + response 6 tokens), a transformer of width D with L layers, 37-token vocabulary. Both
steps take one sampled batch (sampled once, outside the timing) to new params and Adam state:
  grpo  `sequences.response_logp` -> `presets.grpo("grpo")` loss -> grad -> clip + Adam (the step of
        `train/loop_tokens.py`);
  capo  the forward returning the LM-head input (`experiments.papers.capo.capo_inputs`) ->
        `second_order.capo.capo_mask` (top-50 = all 37 candidates, Adam predictive model, its state
        update) -> the masked GRPO loss -> grad -> clip + Adam.
The thresholds (tau_F 1e-2, tau_H 0.1) only decide which tokens are kept, not the work done.
House method (benchmarks/estimators.py): jitted, warmed up, timed round-robin with
`block_until_ready`; the ratio is the median over rounds of capo / grpo timed in the same round.
Goal (issue 8): under 1.15x.
"""

import argparse
import datetime
import os
import sys
import time

import jax
import jax.numpy as jnp
import optax

from benchmarks import common
from benchmarks.estimators import _paired_ratio
from benchmarks.estimators import machine
from benchmarks.estimators import time_round_robin
from experiments.papers import capo as paper
from pgx_lab.envs.token_tasks import make_task
from pgx_lab.envs.token_tasks import vocab
from pgx_lab.estimators import presets
from pgx_lab.models import transformer
from pgx_lab.rollout import sequences
from pgx_lab.second_order import capo

GROUP = 8
LR = 6e-3


def make_steps(model):
  """(grpo_step, capo_step): (params, opt_state, capo_state, batch, attention_mask) -> new ones."""
  estimator = presets.grpo("grpo")
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(LR, eps=1e-8))
  ccfg = capo.CapoConfig(tau_fisher=1e-2, tau_hessian=1e-1)

  def apply(params, opt_state, grads):
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def grpo_loss(params, batch, attention_mask):
    prompt_len = batch.tokens.shape[1] - batch.mask.shape[1]
    logp, _ = sequences.response_logp(params, model, batch.tokens, prompt_len, attention_mask)
    return estimator(logp, batch)[0]

  def capo_loss(params, batch, attention_mask, cstate):
    logp, hidden, response = paper.capo_inputs(params, model, batch, attention_mask)
    adv = jax.lax.stop_gradient(estimator.advantage(batch))
    keep, cstate, m = capo.capo_mask(hidden, params["head"]["kernel"], params["head"]["bias"],
                                     response, adv, batch.mask, cstate, LR, ccfg)
    return capo.with_mask(estimator, keep)(logp, batch)[0], (cstate, m["capo_rejected"])

  @jax.jit
  def grpo_step(params, opt_state, cstate, batch, attention_mask):
    grads = jax.grad(grpo_loss)(params, batch, attention_mask)
    return apply(params, opt_state, grads) + (cstate,)

  @jax.jit
  def capo_step(params, opt_state, cstate, batch, attention_mask):
    grads, (cstate, rejected) = jax.grad(capo_loss, has_aux=True)(params, batch, attention_mask,
                                                                  cstate)
    return apply(params, opt_state, grads) + (cstate, rejected)

  return grpo_step, capo_step, optimizer


def run_size(b, d, layers, repeats, min_sample_s):
  """Times both steps at one size; returns a result row."""
  task = make_task("reverse", max_difficulty=5)
  model = transformer.TransformerConfig(vocab_size=vocab.VOCAB_SIZE,
                                        max_len=task.prompt_len + task.response_len, d_model=d,
                                        num_layers=layers, num_heads=4, value_head=False)
  k_init, k_prompt, k_sample = jax.random.split(jax.random.PRNGKey(0), 3)
  params = transformer.init_params(k_init, model)
  prompts = task.sample_prompts(k_prompt, b // GROUP)
  batch, extras = jax.jit(lambda k, p, pr: sequences.sample_groups(
      k, p, model, task, pr, GROUP))(k_sample, params, prompts)
  grpo_step, capo_step, optimizer = make_steps(model)
  args = (params, optimizer.init(params), capo.init_state(vocab.VOCAB_SIZE, d + 1), batch,
          extras["attention_mask"])
  outs, times, first, inner = time_round_robin({"grpo": grpo_step, "capo": capo_step}, args,
                                               repeats, min_sample_s)
  med = lambda x: sorted(x)[len(x) // 2]
  return {"batch": b, "d_model": d, "layers": layers, "tokens": int(batch.tokens.shape[1]),
          "grpo_ms": 1e3 * med(times["grpo"]), "capo_ms": 1e3 * med(times["capo"]),
          "ratio": _paired_ratio(times["capo"], times["grpo"]),
          "rejected": float(outs["capo"][-1]), "compile_s": first, "calls_per_sample": inner}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  p.add_argument("--sizes", default="128x64x2,256x128x4", help="comma list of BxDxL")
  p.add_argument("--repeats", type=int, default=15)
  p.add_argument("--min-sample-ms", type=float, default=50.0)
  p.add_argument("--out", default="results/bench/capo.json")
  args = p.parse_args(argv)
  try:
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",") if s]
    assert all(len(s) == 3 and s[0] % GROUP == 0 for s in sizes)
  except (ValueError, AssertionError):
    p.error(f"--sizes must be a comma list of BxDxL with B a multiple of {GROUP}")
  if args.repeats < 1:
    p.error("--repeats must be >= 1")
  start, load_before = time.perf_counter(), os.getloadavg()
  rows = []
  for b, d, layers in sizes:
    row = run_size(b, d, layers, args.repeats, 1e-3 * args.min_sample_ms)
    rows.append(row)
    print(f"B={b:4d} D={d:4d} L={layers}  grpo {row['grpo_ms']:8.2f} ms  capo "
          f"{row['capo_ms']:8.2f} ms  ratio {row['ratio']:.3f}", flush=True)
  table = ("| B | d_model | layers | GRPO step (ms) | CAPO step (ms) | CAPO / GRPO |\n"
           "|---|---|---|---|---|---|\n" + "\n".join(
               f"| {r['batch']} | {r['d_model']} | {r['layers']} | {r['grpo_ms']:.2f} | "
               f"{r['capo_ms']:.2f} | {r['ratio']:.3f} |" for r in rows))
  print("\n" + table)
  result = {"command": " ".join(["python -m benchmarks.capo"]
                                + (sys.argv[1:] if argv is None else list(argv))),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "repeats": args.repeats, "min_sample_ms": args.min_sample_ms,
            "wall_s": time.perf_counter() - start, "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(), "rows": rows, "markdown": table}
  if args.out:
    common.write_json(args.out, result)
  return result


if __name__ == "__main__":
  main()
