r"""The main job: the baseline estimators on a contextual sequence bandit, over seeds.

REINFORCE (batch baseline), RLOO, PPO, GRPO, Dr.GRPO and GSPO train a tabular softmax policy on
`envs.SequenceBandit` (verifiable binary reward) for one budget of sampled responses. Each
estimator is one jitted training run vmapped over seeds; the score is the exact expected reward
(no Monte-Carlo noise). Writes `<workdir>/report.md`, `<workdir>/learning_curves.png` and
`<workdir>/metrics.json`, and prints the table.

  python -m experiments.estimator_comparison --workdir=results/demo
  python -m experiments.estimator_comparison --config.iterations=50 --config.seeds=2
"""

import json
import os
import time
from typing import Dict

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np
import optax
import tqdm

from experiments import report as report_lib
from pgx_lab import types
from pgx_lab.envs.bandits import SequenceBandit
from pgx_lab.estimators import presets
from pgx_lab.models.tabular import TabularSequencePolicy

# name -> (estimator, gradient steps per sampled batch). The ratio-based estimators take several
# steps on each batch (PPO epochs), which is what their importance ratio is for; all see the same
# number of sampled responses.
ESTIMATORS = {
    "reinforce": lambda c: (presets.reinforce("batch"), 1),
    "rloo": lambda c: (presets.rloo(), 1),
    "ppo": lambda c: (presets.ppo(c.clip_eps), c.epochs),
    "grpo": lambda c: (presets.grpo("grpo", eps_low=c.clip_eps), c.epochs),
    "dr_grpo": lambda c: (presets.grpo("dr_grpo", eps_low=c.clip_eps), c.epochs),
    "gspo": lambda c: (presets.gspo(), c.epochs),
}


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.estimators = ",".join(ESTIMATORS)
  c.seeds = 8
  c.iterations = 200          # sampled batches per run
  c.eval_every = 10
  c.prompts_per_batch = 8
  c.group_size = 8            # responses per prompt (B = prompts * group)
  c.num_contexts = 64
  c.length = 6
  c.vocab_size = 4
  c.threshold = 4             # reward 1 when at least this many tokens are right
  c.learning_rate = 0.05
  c.epochs = 4                # gradient steps per batch for the ratio-based estimators
  c.clip_eps = 0.2
  c.task_seed = 0
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first invalid field of `c`."""
  known = set(default_config().keys())
  for k in c.keys():
    if k not in known:
      raise ValueError(f"unknown config field `config.{k}`; known: {sorted(known)}.")
  for k in ("seeds", "iterations", "eval_every", "prompts_per_batch", "group_size",
            "num_contexts", "length", "vocab_size", "threshold", "epochs"):
    v = c[k]
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
      raise ValueError(f"`config.{k}` must be a positive int, got {v!r}.")
  if c.group_size < 2:
    raise ValueError(f"`config.group_size` must be >= 2 for group baselines, got {c.group_size}.")
  if c.threshold > c.length:
    raise ValueError(f"`config.threshold` ({c.threshold}) must be <= `config.length` ({c.length}).")
  if c.iterations % c.eval_every:
    raise ValueError(f"`config.iterations` ({c.iterations}) must be a multiple of "
                     f"`config.eval_every` ({c.eval_every}).")
  for k in ("learning_rate", "clip_eps"):
    if not isinstance(c[k], (int, float)) or not c[k] > 0:
      raise ValueError(f"`config.{k}` must be a positive number, got {c[k]!r}.")
  names = [n for n in c.estimators.split(",") if n]
  if not names:
    raise ValueError("`config.estimators` names no estimator.")
  for n in names:
    if n not in ESTIMATORS:
      raise ValueError(f"unknown estimator {n!r} in `config.estimators`; known: {list(ESTIMATORS)}.")


def make_chunk(c: ml_collections.ConfigDict, name: str, bandit: SequenceBandit,
               policy: TabularSequencePolicy):
  """Returns `chunk(state) -> (state, (expected_reward, metrics))`: `eval_every` iterations, one seed."""
  estimator, epochs = ESTIMATORS[name](c)
  optimizer = optax.adam(c.learning_rate)
  p, g = c.prompts_per_batch, c.group_size

  def loss_fn(params, contexts, responses, batch):
    return estimator(policy.token_logp(params, contexts, responses), batch)

  def iteration(state, _):
    params, opt_state, key = state
    key, k_ctx, k_sample = jax.random.split(key, 3)
    contexts = jnp.repeat(bandit.sample_contexts(k_ctx, p), g)
    responses = policy.sample(params, k_sample, contexts)
    rewards = bandit.reward(contexts, responses)
    batch = types.SequenceBatch(
        mask=jnp.ones(responses.shape, jnp.float32),
        old_logp=policy.token_logp(params, contexts, responses),
        rewards=rewards,
        group_ids=jnp.repeat(jnp.arange(p, dtype=jnp.int32), g),
        advantages=rewards)   # PPO whitens these over the batch (no critic in a bandit)

    def epoch(carry, _):
      params, opt_state = carry
      (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          params, contexts, responses, batch)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), metrics

    (params, opt_state), metrics = jax.lax.scan(epoch, (params, opt_state), None, length=epochs)
    metrics = jax.tree.map(jnp.mean, metrics)
    metrics["sampled_reward"] = jnp.mean(rewards)
    return (params, opt_state, key), metrics

  def expected_reward(params):
    return jnp.mean(bandit.expected_reward(policy.target_probs(params, bandit.targets)))

  def chunk(state):
    state, metrics = jax.lax.scan(iteration, state, None, length=c.eval_every)
    return state, (expected_reward(state[0]), jax.tree.map(jnp.mean, metrics))

  def init(key):
    params = policy.init(key)
    return params, optimizer.init(params), key

  return init, chunk, expected_reward


def run(c: ml_collections.ConfigDict, workdir: str, progress: bool = True) -> Dict:
  """Trains every estimator of `c` over `c.seeds` seeds; writes the report; returns the results."""
  validate(c)
  bandit = SequenceBandit.make(jax.random.PRNGKey(c.task_seed), c.num_contexts, c.length,
                               c.vocab_size, c.threshold)
  policy = TabularSequencePolicy(c.num_contexts, c.length, c.vocab_size)
  names = [n for n in c.estimators.split(",") if n]
  n_chunks = c.iterations // c.eval_every
  seeds = jax.random.split(jax.random.PRNGKey(1), c.seeds)
  results = {}
  bar = tqdm.tqdm(total=len(names) * n_chunks, desc="estimators", disable=not progress,
                  unit="chunk", mininterval=0.5)
  for name in names:
    init, chunk, expected_reward = make_chunk(c, name, bandit, policy)
    state = jax.jit(jax.vmap(init))(seeds)
    start_reward = np.asarray(jax.jit(jax.vmap(expected_reward))(state[0]))
    step = jax.jit(jax.vmap(chunk))
    curve, metrics_curve = [start_reward], []
    t0 = time.perf_counter()
    for _ in range(n_chunks):
      state, (reward, metrics) = step(state)
      curve.append(np.asarray(reward))
      metrics_curve.append({k: float(np.mean(v)) for k, v in metrics.items()})
      bar.set_postfix(estimator=name, reward=f"{float(np.mean(curve[-1])):.3f}")
      bar.update(1)
    results[name] = {
        "curve": np.stack(curve, axis=1).tolist(),      # [seeds, n_chunks + 1]
        "metrics": metrics_curve,
        "seconds": time.perf_counter() - t0,
    }
  bar.close()
  results["_steps"] = [i * c.eval_every for i in range(n_chunks + 1)]
  results["_config"] = c.to_dict()
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "metrics.json"), "w") as f:
    json.dump(results, f)
  report_lib.write_estimator_report(results, workdir, samples_per_iteration=(
      c.prompts_per_batch * c.group_size))
  return results


def main(argv):
  del argv
  t0 = time.perf_counter()
  results = run(_CONFIG.value, _WORKDIR.value)
  print(report_lib.summary_table(results))
  print(f"\nreport: {os.path.join(_WORKDIR.value, 'report.md')}  "
        f"({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
  # Flags are defined only when run as a binary, so importing this module (the demo suite, tests)
  # does not clash with other binaries' global `--config`/`--workdir` flags.
  _CONFIG = config_flags.DEFINE_config_dict("config", default_config())
  _WORKDIR = flags.DEFINE_string("workdir", "results/demo", "Where the report and plot go.")
  app.run(main)
