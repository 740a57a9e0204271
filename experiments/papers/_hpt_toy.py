r"""The HPT toy's pieces (experiments/papers/hpt.py): task, model, the data of its two set-ups, the
exact evaluation and the one training program that both set-ups share.

Task and model (spec llm_post_training.md section 5 (d)): a 50/50 mixture of "copy" (1-4 digits,
classes 0-3) and "reverse" (3-4 digits, classes 4-5); the small causal transformer (d_model 32,
2 layers). Methods: GRPO, SFT, HPT and the two-stage baseline SFT->GRPO, all as
`estimators.hybrid.hpt_loss` with per-prompt weights (alpha, beta) = (1, 0), (0, 1), the switch
(gate 0), or for SFT->GRPO the step schedule (0, 1) for steps t < split, (1, 0) from the split on
(`weights_fn`), with the Adam state reset to its initial value at the split (`stage_reset`).

The training program reads each step's prompts from a prompt TABLE through an index SCHEDULE, so
the two set-ups are the same compiled program with different arrays:
  * set-up A ("fresh"): the table holds `steps x prompts` prompts sampled with the same keys the
    first version of the module sampled them with inside the scan (fresh prompts every step,
    infinite data), the schedule is 0, 1, 2, ... (each prompt used once);
  * set-up B ("paper"): the table holds a FIXED training set of N prompts with one demonstration
    each (padded to the same row count, padding never indexed), the schedule walks through it in
    shuffled epochs (verl's `data.shuffle=True`), the same schedule for every method.
Evaluation is the exact probability that sampling with temperature `tau` and nucleus `top_p`
produces the demonstration (`exact_success`), per prompt, averaged per class with weights.
"""

import hashlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pgx_lab.envs.token_tasks import make_task
from pgx_lab.envs.token_tasks import vocab
from pgx_lab.estimators import hybrid
from pgx_lab.models import sampling
from pgx_lab.models import transformer
from pgx_lab.rollout import sequences

METHODS = ("GRPO", "SFT", "HPT", "SFT->GRPO")
GROUP, LR, GATE, SFT_COEF, BAND = 8, 1e-3, 0, 1.0, (0.2, 0.6)
# SFT->GRPO: the share of the update budget spent on SFT. Neither the paper's text reachable here
# nor its code (the repository only prepares the SFT data, data/prepare_sft.py for OpenRLHF) gives
# the split of its SFT->GRPO baseline, so this is our reading: half the updates each.
SFT_SHARE = 0.5

# The paper's set-up (TsinghuaC3I/Unify-Post-Training exp_scripts/train.sh, data/prepare_train.py):
# 46k prompts of OpenR1-Math-46k, each with one demonstration; 500 steps x 128 prompts.
PAPER_DATASET, PAPER_DRAWS = 46_000, 500 * 128
EVAL_TEMPERATURE, EVAL_TOP_P, PASS_K = 0.6, 0.95, 8        # train.sh val_temperature / val_top_p
HELD_OUT_BYTE = 51                                           # md5 first byte < 51: ~20% held out

COPY = make_task("copy", max_difficulty=4)
TASK = make_task("mixture", tasks=(COPY, make_task("reverse", min_difficulty=3,
                                                   max_difficulty=4)))
HARD = np.arange(TASK.num_classes) >= TASK.class_offsets[1]      # the reverse classes
MODEL = transformer.TransformerConfig(vocab_size=vocab.VOCAB_SIZE,
                                      max_len=TASK.prompt_len + TASK.response_len, d_model=32,
                                      num_layers=2, num_heads=2, value_head=False)


def train_set_size(steps, prompts):
  """N for set-up B: the paper's epochs over its data, PAPER_DRAWS / PAPER_DATASET (~1.39),
  kept: N = round(steps * prompts * PAPER_DATASET / PAPER_DRAWS)."""
  return int(round(steps * prompts * PAPER_DATASET / PAPER_DRAWS))


def demo_logp(params, prompts, demo):
  """Token log-probs [n, L + 1] (temperature 1) of the demonstrations `demo` [n, L + 1] after
  `prompts` (a `Prompts` batch of n), and their mask [n, L + 1] (PAD is not trained on)."""
  demo_mask = (demo != vocab.PAD).astype(jnp.int32)
  tokens = jnp.concatenate([prompts.tokens, demo], axis=1)
  attn = jnp.concatenate([prompts.mask.astype(jnp.int32), demo_mask], axis=1)
  logp, _ = sequences.response_logp(params, MODEL, tokens, prompts.tokens.shape[1], attn)
  return logp, demo_mask.astype(jnp.float32)


def exact_success(params, prompts, demo, temperature, top_p):
  """[n] probability that sampling the response token by token at `temperature` (scalar > 0)
  from the nucleus `top_p` (scalar in (0, 1]; >= 1: no truncation) yields exactly `demo` [n, L+1]
  (answer + EOS, PAD after) after `prompts`: the product over its tokens of the token's
  probability under `models.sampling.sampling_logits` (the distribution `sampling.sample` draws
  from: logits / temperature, nucleus of Holtzman et al. 2020, renormalised; 0 outside the
  nucleus). Exact-match reward 1 is exactly this event."""
  mask = demo != vocab.PAD
  tokens = jnp.concatenate([prompts.tokens, demo], axis=1)
  attn = jnp.concatenate([prompts.mask.astype(jnp.int32), mask.astype(jnp.int32)], axis=1)
  logits, _ = transformer.apply(params, MODEL, tokens, attn)
  logits = logits[:, prompts.tokens.shape[1] - 1:-1]                      # [n, L + 1, V]
  pick = lambda z: jnp.take_along_axis(jax.nn.log_softmax(z, -1), demo[..., None], -1)[..., 0]
  plain = pick(logits / temperature)
  nucleus = pick(sampling.sampling_logits(logits, temperature=temperature, top_p=top_p))
  tok = jnp.where(top_p >= 1.0, plain, nucleus)
  return jnp.exp(jnp.sum(jnp.where(mask, tok, 0.0), axis=1))


def evaluate(params, eval_set, temperature, top_p):
  """Per-class mean exact success [C] and pass@PASS_K [C] (1 - (1 - p)^k per prompt: exact for k
  independent samples) over the eval prompts; eval_set = (Prompts of E, demonstrations)."""
  prompts, demo = eval_set
  p = exact_success(params, prompts, demo, temperature, top_p)
  onehot = jax.nn.one_hot(prompts.class_id, TASK.num_classes)
  count = jnp.maximum(jnp.sum(onehot, axis=0), 1.0)
  return (p @ onehot) / count, ((1.0 - (1.0 - p) ** PASS_K) @ onehot) / count


def two_stage_split(chunks, eval_every):
  """The first GRPO update of SFT->GRPO in a run of `chunks` x `eval_every` updates (ints):
  round(SFT_SHARE x chunks) x eval_every, on an evaluation boundary (so the evaluation there
  scores the end of the SFT stage); updates t < split are SFT, t >= split GRPO."""
  return int(round(SFT_SHARE * chunks)) * eval_every


def weights_fn(method, step=0, split=0):
  """(alpha, beta) as a function of the solve rate P [G] for a traced method index `method`
  (0 GRPO, 1 SFT, 2 HPT, 3 SFT->GRPO), at update `step` (traced int scalar) of a two-stage run
  that switches to GRPO at update `split` (int scalar). No Python branch: one compiled program."""
  def fn(p):
    switch = (p > GATE / GROUP).astype(jnp.float32)        # solved > gate
    stage = jnp.where(step < split, 0.0, 1.0) * jnp.ones_like(p)
    alpha = jnp.select([method == 0, method == 1, method == 3],
                       [jnp.ones_like(p), jnp.zeros_like(p), stage], switch)
    return alpha, 1.0 - alpha
  return fn


def method_loss(params, batch, attn, prompts, demo, method, step=0, split=0):
  """The loss every method trains on: `hybrid.hpt_loss` with `weights_fn(method, step, split)`.

  Args:
    params: transformer params.
    batch: `SequenceBatch` of the sampled rollouts (tokens [B, P + L], mask [B, L], rewards [B],
      group_ids [B], old_logp [B, L]).
    attn: [B, P + L] attention mask of the rollouts.
    prompts: `Prompts` of the G prompts; demo: [G, L + 1] their demonstrations.
    method, step, split: as in `weights_fn`.

  Returns:
    (loss, metrics) of `hybrid.hpt_loss`.
  """
  logp, _ = sequences.response_logp(params, MODEL, batch.tokens,
                                    batch.tokens.shape[1] - batch.mask.shape[1], attn)
  d_logp, d_mask = demo_logp(params, prompts, demo)
  return hybrid.hpt_loss(logp, batch, d_logp, d_mask, gate=GATE, sft_loss_coef=SFT_COEF,
                         mode=weights_fn(method, step, split))


def stage_reset(opt_state, init_state, method, step, split):
  """SFT->GRPO's second stage starts a fresh optimizer, as a separate RL run from the SFT
  checkpoint would: returns `init_state` where method == 3 and step == split, else `opt_state`
  (pytrees of the same structure; method, step traced ints). `train` applies it before the
  chunk of updates that starts at `step`."""
  fresh = (method == 3) & (step == split)
  return jax.tree.map(lambda s, s0: jnp.where(fresh, s0, s), opt_state, init_state)


def train(method, params, key, table, schedule, eval_set, temperature, top_p, eval_every):
  """One run of method index `method` (traced; `weights_fn`) from `params`, reading step t's
  prompts as `table[schedule[t]]` (table: `Prompts` of R rows; schedule: [chunks, eval_every,
  prompts] int). SFT->GRPO switches at update `two_stage_split(chunks, eval_every)`.
  Returns per-class success and pass@k [chunks + 1, C] each (at steps 0, eval_every, ...) and the
  mean share of prompts on SFT per chunk [chunks]."""
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(LR))
  n_chunks = schedule.shape[0]
  split = two_stage_split(n_chunks, eval_every)
  init_state = opt.init(params)

  def step(carry, xs):
    (p, opt_state), (k, idx, t) = carry, xs
    _, ks = jax.random.split(k)          # the first key sampled the prompts in the first version
    prompts = jax.tree.map(lambda x: x[idx], table)
    batch, extras = sequences.sample_groups(ks, p, MODEL, TASK, prompts, GROUP, temperature=1.0)
    grads, m = jax.grad(method_loss, has_aux=True)(p, batch, extras["attention_mask"], prompts,
                                                   TASK.demonstration(prompts), method, t, split)
    updates, opt_state = opt.update(grads, opt_state, p)
    return (optax.apply_updates(p, updates), opt_state), m["sft_fraction"]

  def chunk(carry, xs):
    k, idx, c = xs
    carry = (carry[0], stage_reset(carry[1], init_state, method, c * eval_every, split))
    carry, frac = jax.lax.scan(step, carry, (jax.random.split(k, eval_every), idx,
                                             c * eval_every + jnp.arange(eval_every)))
    return carry, (evaluate(carry[0], eval_set, temperature, top_p), jnp.mean(frac))

  _, ((acc, pk), frac) = jax.lax.scan(chunk, (params, init_state),
                                      (jax.random.split(key, n_chunks), schedule,
                                       jnp.arange(n_chunks)))
  acc0, pk0 = evaluate(params, eval_set, temperature, top_p)
  return jnp.concatenate([acc0[None], acc]), jnp.concatenate([pk0[None], pk]), frac


def run_key(seed):
  """The training key of seed `seed` (shared by the methods and both set-ups)."""
  return jax.random.PRNGKey(1000 + seed)


def fresh_table(seed, steps, eval_every, prompts):
  """Set-up A: the prompts of every step, [steps * prompts] rows, sampled with the keys the scan
  derives from `run_key(seed)`, and the schedule 0, 1, ... [chunks, eval_every, prompts]."""
  n_chunks = steps // eval_every
  keys = jax.vmap(lambda k: jax.random.split(k, eval_every))(
      jax.random.split(run_key(seed), n_chunks)).reshape(-1, 2)
  prompt_keys = jax.vmap(lambda k: jax.random.split(k)[0])(keys)
  rows = [TASK.sample_prompts(k, prompts) for k in prompt_keys]
  table = jax.tree.map(lambda *x: np.concatenate(x), *rows)
  return table, np.arange(steps * prompts).reshape(n_chunks, eval_every, prompts)


def held_out(tokens):
  """[n] bool: the prompt (row of `tokens` [n, P]) belongs to the held-out split: the first byte
  of the MD5 of its int32 tokens is < HELD_OUT_BYTE (a fixed ~20% of the distinct prompts of
  every class; a split by prompt, like the paper's disjoint benchmarks)."""
  rows = np.asarray(tokens, np.int32)
  return np.array([hashlib.md5(r.tobytes()).digest()[0] < HELD_OUT_BYTE for r in rows])


def _first(prompts, keep, n, what):
  """The first n prompts (numpy arrays) with `keep`; raises if there are fewer."""
  idx = np.flatnonzero(keep)
  if idx.size < n:
    raise RuntimeError(f"only {idx.size} {what} prompts among the candidates, need {n}.")
  return jax.tree.map(lambda x: np.asarray(x)[idx[:n]], prompts)


def paper_table(seed, steps, eval_every, prompts, pool):
  """Set-up B: a fixed training set of N = `train_set_size` prompts, the first N outside the
  held-out split among `pool` prompts drawn with the seed's key, padded (by repetition) to
  steps * prompts rows, and its schedule: shuffled epochs over the N prompts, cut to
  steps x prompts, [chunks, eval_every, prompts]."""
  n, rows = train_set_size(steps, prompts), steps * prompts
  cand = TASK.sample_prompts(jax.random.PRNGKey(30_000 + seed), pool)
  train_set = _first(cand, ~held_out(cand.tokens), n, "training")
  epochs = math.ceil(rows / n)
  table = jax.tree.map(lambda x: np.concatenate([x] * epochs)[:rows], train_set)
  rng = np.random.default_rng(40_000 + seed)
  order = np.concatenate([rng.permutation(n) for _ in range(epochs)])[:rows]
  return table, order.reshape(steps // eval_every, eval_every, prompts)


def eval_sets(n, pool):
  """The evaluation prompts of both set-ups, n each, with demonstrations: A: n fresh prompts
  (key 10_000, as in the first version); B: the first n held-out prompts among `pool` prompts
  drawn with key 20_000."""
  fresh = TASK.sample_prompts(jax.random.PRNGKey(10_000), n)
  cand = TASK.sample_prompts(jax.random.PRNGKey(20_000), pool)
  test = _first(cand, held_out(cand.tokens), n, "held-out")
  return (fresh, TASK.demonstration(fresh)), (test, TASK.demonstration(test))
