"""GRPO, GSPO and Dr.GRPO on a token task: pretrain (or restore), sample groups, estimate, update.

Each update draws `prompts_per_batch` prompts, samples `group_size` responses to each with the
current policy (`rollout.sequences.sample_groups`, temperature `config.temperature`), scores them
with the task's verifiable reward, and takes `epochs` Adam steps on that batch with the estimator:
  grpo     `presets.grpo("grpo")`: group-normalised advantage, token clip, per-sequence token mean
           (Shao et al. 2024, eq. 3);
  dr_grpo  `presets.grpo("dr_grpo")`: no std scaling, token sum / (B * T_max) (Liu et al. 2025);
  gspo     `presets.gspo`: sequence-level ratio clipped per sequence (Zheng et al. 2025, eq. 5-7).
`old_logp` is the sampling policy's log-probs, so the first epoch is on-policy (ratio 1) and later
epochs are clipped off-policy steps, as in PPO. With `kl_beta > 0` the pretrained policy is the
frozen reference (kept in `TrainState.extra["ref_params"]`) and a k3 KL penalty is added.

The starting policy is the transformer pretrained to a sampled success rate in
[`pretrain_low`, `pretrain_high`] (`train.pretrain`; RL from an SFT policy, Ouyang et al. 2022).
The pretrained state is checkpointed at update 0, so a resumed run never pretrains again.
`config.pretrain = False` starts RL from the random initialisation (tiny tests, where the reward
is then mostly 0 and the gradients mostly vanish). The logged `eval_success` is the exact-match
success rate of one temperature-1 sample for each of `eval_prompts` fresh prompts.
"""

import warnings

import jax
import jax.numpy as jnp

from pgx_lab.envs.token_tasks import make_task
from pgx_lab.envs.token_tasks import vocab
from pgx_lab.estimators import presets
from pgx_lab.models import transformer
from pgx_lab.rollout import sequences
from pgx_lab.train import loop
from pgx_lab.train.pretrain import exact_task
from pgx_lab.train.pretrain import pretrain
from pgx_lab.train.state import TrainState
from pgx_lab.train.update import make_update_step


def make_estimator(config):
  """The config's estimator preset (see the module docstring)."""
  if config.estimator == "gspo":
    return presets.gspo(config.clip_eps, config.clip_eps_high, kl_beta=config.kl_beta)
  return presets.grpo(config.estimator, eps_low=config.clip_eps, eps_high=config.clip_eps_high,
                      kl_beta=config.kl_beta)


def make_task_and_model(config):
  """(task, TransformerConfig) of a "tokens" config; the model has no value head. The task's
  `reward_type` ("exact" or "partial" credit) is the RL reward; success is always exact match."""
  task = make_task(config.task, max_difficulty=config.max_difficulty,
                   reward_type=config.reward_type)
  model = transformer.TransformerConfig(
      vocab_size=vocab.VOCAB_SIZE, max_len=task.prompt_len + task.response_len,
      d_model=config.d_model, num_layers=config.num_layers, num_heads=config.num_heads,
      value_head=False)
  return task, model


def make_program(config) -> loop.Program:
  """The token-task RL `Program` of a validated "tokens" config."""
  task, model = make_task_and_model(config)
  estimator = make_estimator(config)
  optimizer = loop.make_optimizer(config.learning_rate, config.max_grad_norm)
  n, g = config.prompts_per_batch, config.group_size
  use_ref = config.kl_beta > 0
  exact = exact_task(task)

  def loss_fn(params, data, key):
    """Estimator loss of one sampled batch: data["batch"] a SequenceBatch, data["attention_mask"]
    [B, P + N]."""
    del key
    batch = data["batch"]
    prompt_len = batch.tokens.shape[1] - batch.mask.shape[1]
    logp, entropy = sequences.response_logp(params, model, batch.tokens, prompt_len,
                                            data["attention_mask"])
    return estimator(logp, batch, entropy=entropy)

  update = make_update_step(loss_fn, optimizer).step_fn

  def one_update(state, _):
    state, k = loop.split_key(state)
    k_prompt, k_sample = jax.random.split(k)
    prompts = task.sample_prompts(k_prompt, n)
    batch, extras = sequences.sample_groups(k_sample, state.params, model, task, prompts, g,
                                            temperature=config.temperature)
    if use_ref:
      prompt_len = batch.tokens.shape[1] - batch.mask.shape[1]
      ref_logp, _ = sequences.response_logp(state.extra["ref_params"], model, batch.tokens,
                                            prompt_len, extras["attention_mask"])
      batch = batch.replace(ref_logp=jax.lax.stop_gradient(ref_logp))
    data = {"batch": batch, "attention_mask": extras["attention_mask"]}

    def epoch(state, _):
      return update(state, data)

    state, metrics = jax.lax.scan(epoch, state, None, length=config.epochs)
    metrics = loop.mean_over_chunk(metrics)
    metrics["reward"] = jnp.mean(batch.rewards)
    metrics["response_len"] = jnp.mean(jnp.sum(batch.mask, axis=1))
    return state, metrics

  @jax.jit
  def chunk(state):
    state, metrics = jax.lax.scan(one_update, state, None, length=config.chunk_size)
    return state, loop.mean_over_chunk(metrics)

  @jax.jit
  def evaluate(state):
    k_prompt, k_sample = jax.random.split(jax.random.fold_in(state.key, 0x5EED))
    prompts = task.sample_prompts(k_prompt, config.eval_prompts)
    batch, _ = sequences.sample_groups(k_sample, state.params, model, exact, prompts, 1,
                                       temperature=1.0)
    return {"eval_success": jnp.mean(batch.rewards)}

  k_pretrain, k_init, k_state = jax.random.split(jax.random.PRNGKey(config.seed), 3)

  def fresh_state(params):
    extra = {"ref_params": params} if use_ref else {}
    return TrainState.create(params, optimizer, k_state, extra=extra)

  init_params = jax.jit(transformer.init_params, static_argnums=1)

  def init():
    params = init_params(k_init, model)
    if config.pretrain:
      params, hist = pretrain(
          k_pretrain, task, model, target_success=(config.pretrain_low, config.pretrain_high),
          max_steps=config.pretrain_max_steps, batch_size=n * g, lr=config.pretrain_lr,
          eval_every=config.pretrain_eval_every, eval_size=config.eval_prompts, params=params,
          on_failure="return", progress=config.progress)
      if not hist["reached"]:
        warnings.warn(f"pretraining did not reach the success band [{config.pretrain_low}, "
                      f"{config.pretrain_high}] (last {hist['success'][-1]:.3f} at step "
                      f"{hist['step'][-1]}); RL starts from there.")
    return jax.jit(fresh_state)(params)

  def abstract():
    return jax.eval_shape(lambda: fresh_state(transformer.init_params(k_init, model)))

  describe = (f"{config.estimator} ({estimator.name}) on the `{config.task}` token task "
              f"(difficulty <= {config.max_difficulty}) with a {config.num_layers}-layer, "
              f"d_model {config.d_model} causal transformer; {n} prompts x {g} responses per "
              f"update, {config.epochs} gradient steps per batch, Adam lr "
              f"{config.learning_rate}, clip ({config.clip_eps}, {config.clip_eps_high}), "
              f"kl_beta {config.kl_beta}. Start: "
              + (f"pretrained to a success rate in [{config.pretrain_low}, "
                 f"{config.pretrain_high}]." if config.pretrain else "random initialisation."))
  return loop.Program(init=init, abstract=abstract, chunk=chunk, evaluate=evaluate,
                      headline="eval_success", describe=describe)


def train_tokens(config, workdir: str) -> loop.TrainResult:
  """Trains (or resumes) GRPO / GSPO / Dr.GRPO on the config's token task in `workdir`.

  Args:
    config: a validated "tokens" config (`experiments/configs/{grpo,gspo,dr_grpo}_tokens.py`).
    workdir: the run's directory (checkpoints/, metrics.jsonl, tb/, report.md).

  Returns:
    `loop.TrainResult` (one run, no seed axis).
  """
  return loop.run_program(config, workdir, loop.cached_program(config, make_program))
