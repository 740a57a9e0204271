"""PPO on a jittable gymnax environment, PureJaxRL style: updates under jit, vmapped over seeds.

Following PureJaxRL's `ppo.py` (Lu et al. 2022, "Discovered Policy Optimisation"), one update is
  1. `num_steps` auto-resetting steps (`envs.api.auto_reset_step`) of `num_envs` environments
     whose obs and state carry over from the previous update (they live in
     `TrainState.extra`), acting with an MLP actor-critic (`models.mlp.CategoricalPolicy` with a
     value head);
  2. GAE(gamma, lambda) advantages from the rollout's values (`estimators.advantage_parts.gae`,
     Schulman et al. 2016), bootstrapped with V at the last obs, and value targets A + V;
  3. `update_epochs` passes over the num_envs * num_steps transitions, shuffled into
     `num_minibatches` minibatches, each one Adam step (`train.update`) on the PPO-clip loss
     (`estimators.presets.ppo`, advantages whitened per minibatch, entropy bonus; Schulman et al.
     2017, eq. 7 and 9) plus `value_coef` times PPO's clipped value loss
     0.5 max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2);
  with Adam's learning rate annealed linearly to 0 over the run when `anneal_lr` (as PureJaxRL).
`chunk_size` updates run as one `lax.scan`, vmapped over `num_seeds` independent seeds.

The rollout is written here rather than with `rollout.rollout`, which resets every row at its
start: episodes must run on across updates, or the policy never trains past `num_steps` steps of
an episode (on CartPole that capped the return near 250 of 500). Like `rollout.rollout` in
auto-reset mode, a truncated step's bootstrap reads the next episode's first obs (the Trajectory
has no field for the final obs); CartPole's 500-step limit makes this rare.

Logged: `train_return`, the mean return of the episodes that ended during the chunk's rollouts
(PureJaxRL's `returned_episode_returns`; NaN-free: 0 when none ended), and `eval_return`, the mean
return of `eval_envs` fresh episodes (`rollout.rollout`, episode mode, up to the time limit)
sampled from the policy after each chunk.
"""

import jax
import jax.numpy as jnp

from pgx_lab import types
from pgx_lab.envs import api
from pgx_lab.envs.gymnax_adapter import GymnaxEnv
from pgx_lab.estimators import advantage_parts
from pgx_lab.estimators import presets
from pgx_lab.estimators import value_loss as value_loss_lib
from pgx_lab.models import mlp
from pgx_lab.rollout import env_rollout
from pgx_lab.train import loop
from pgx_lab.train.state import TrainState
from pgx_lab.train.update import make_update_step


def make_program(config) -> loop.Program:
  """The PPO `Program` of a validated "env" config."""
  env = GymnaxEnv(config.env_name)
  env_params = env.default_params()
  model = mlp.CategoricalPolicy(env.action_space(env_params).n,
                                hidden_sizes=(config.hidden_size, config.hidden_size),
                                value_head=True)
  policy_fn = env_rollout.model_policy_fn(model)
  value_fn = env_rollout.model_value_fn(model)
  estimator = presets.ppo(config.clip_eps, advantage="precomputed", whiten=True,
                          entropy_coef=config.entropy_coef)
  gae = advantage_parts.gae(config.gae_lambda)
  steps_per_update = config.update_epochs * config.num_minibatches
  if config.anneal_lr:
    lr = lambda count: config.learning_rate * (
        1.0 - (count // steps_per_update) / config.num_updates)
  else:
    lr = config.learning_rate
  optimizer = loop.make_optimizer(lr, config.max_grad_norm)
  rows = config.num_envs * config.num_steps
  eps = config.clip_eps

  def loss_fn(params, mb, key):
    """PPO loss of a minibatch of transitions: mb["obs"] [n, obs_dim], ["actions"], ["logp"],
    ["values"] (V_old), ["advantages"], ["targets"] [n]."""
    del key
    dist, value = model.apply(params, mb["obs"])
    logp = mlp.log_prob(dist, mb["actions"])
    seq = types.SequenceBatch(mask=jnp.ones((logp.shape[0], 1), jnp.float32),
                              old_logp=mb["logp"][:, None], advantages=mb["advantages"][:, None])
    policy_loss, metrics = estimator(logp[:, None], seq, entropy=mlp.entropy(dist)[:, None])
    value_loss = value_loss_lib.clipped_value_loss(value, mb["values"], mb["targets"], clip=eps)
    metrics = dict(metrics, policy_loss=policy_loss, value_loss=value_loss)
    return policy_loss + config.value_coef * value_loss, metrics

  update = make_update_step(loss_fn, optimizer).step_fn

  def env_rollout_carried(key, params, carry):
    """`num_steps` auto-reset steps from `carry` = (obs [E, ...], env_state, episode_return [E]);
    returns the Trajectory [E, T], the next carry, and (sum of finished returns, their count)."""

    def body(carry, k):
      obs, env_state, ep_ret = carry
      keys = jax.random.split(k, (config.num_envs, 2))
      action, logp = jax.vmap(policy_fn, (None, 0, 0))(params, keys[:, 0], obs)
      value = jax.vmap(value_fn, (None, 0))(params, obs)
      tr = jax.vmap(lambda kk, st, a: api.auto_reset_step(env, kk, st, a, env_params))(
          keys[:, 1], env_state, action)
      ep_ret = ep_ret + tr.reward
      done = jnp.logical_or(tr.terminated, tr.truncated)
      rec = (obs, action, tr.reward, logp, tr.terminated, tr.truncated, value,
             jnp.where(done, ep_ret, 0.0), done)
      return (tr.obs, tr.state, jnp.where(done, 0.0, ep_ret)), rec

    carry, rec = jax.lax.scan(body, carry, jax.random.split(key, config.num_steps))
    obs, actions, rewards, logp, terminated, truncated, values, finished, done = (
        jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), rec))
    last = jax.vmap(value_fn, (None, 0))(params, carry[0])
    traj = types.Trajectory(obs=obs, actions=actions, rewards=rewards, logp=logp,
                            terminated=terminated, truncated=truncated,
                            mask=jnp.ones(rewards.shape, jnp.float32),
                            values=jnp.concatenate([values, last[:, None]], axis=1))
    return traj, carry, (jnp.sum(finished), jnp.sum(done))

  def one_update(state, _):
    state, k = loop.split_key(state)
    k_roll, k_perm = jax.random.split(k)
    carry = (state.extra["obs"], state.extra["env_state"], state.extra["episode_return"])
    traj, carry, ended = env_rollout_carried(k_roll, state.params, carry)
    state = state.replace(extra={"obs": carry[0], "env_state": carry[1],
                                 "episode_return": carry[2]})
    adv = gae(traj.to_sequence_batch(config.gamma))
    values = traj.values[:, :-1]
    flat = {"obs": traj.obs, "actions": traj.actions, "logp": traj.logp, "values": values,
            "advantages": adv, "targets": adv + values}
    flat = jax.tree.map(lambda x: x.reshape((rows,) + x.shape[2:]), flat)

    def epoch(state, k_epoch):
      perm = jax.random.permutation(k_epoch, rows)
      mbs = jax.tree.map(lambda x: x[perm].reshape((config.num_minibatches, -1) + x.shape[1:]),
                         flat)
      return jax.lax.scan(update, state, mbs)

    state, metrics = jax.lax.scan(epoch, state, jax.random.split(k_perm, config.update_epochs))
    metrics = jax.tree.map(jnp.mean, metrics)
    return state, (metrics, ended)

  def chunk_one(state):
    state, (metrics, (ret_sum, count)) = jax.lax.scan(one_update, state, None,
                                                      length=config.chunk_size)
    metrics = loop.mean_over_chunk(metrics)
    metrics["train_return"] = jnp.sum(ret_sum) / jnp.maximum(jnp.sum(count), 1)
    metrics["episodes"] = jnp.sum(count).astype(jnp.float32)
    return state, metrics

  horizon = int(env_params.max_steps_in_episode)

  def evaluate_one(state):
    traj = env_rollout.rollout(jax.random.fold_in(state.key, 0x5EED), env, env_params, policy_fn,
                               state.params, config.eval_envs, horizon)
    return {"eval_return": jnp.mean(jnp.sum(traj.rewards, axis=1))}

  obs_shape = env.observation_space(env_params).shape

  def init_one(key):
    k_params, k_state, k_reset = jax.random.split(key, 3)
    params = model.init(k_params, jnp.zeros(obs_shape, jnp.float32))
    obs, env_state = jax.vmap(env.reset, (0, None))(jax.random.split(k_reset, config.num_envs),
                                                    env_params)
    extra = {"obs": obs, "env_state": env_state,
             "episode_return": jnp.zeros((config.num_envs,), jnp.float32)}
    return TrainState.create(params, optimizer, k_state, extra=extra)

  keys = loop.seed_keys(config.seed, config.num_seeds)
  # lax.map, not vmap: a vmapped orthogonal init is a batched QR, which can deadlock jaxlib
  # 0.10.2's CPU thread pool (see `models.mlp`); initialisation is cheap, so seeds go one by one.
  init = jax.jit(lambda ks: jax.lax.map(init_one, ks))
  describe = (f"PPO (Schulman et al. 2017) on gymnax {config.env_name}, PureJaxRL style: "
              f"{config.num_envs} envs x {config.num_steps} steps per update, "
              f"{config.update_epochs} epochs of {config.num_minibatches} minibatches, Adam lr "
              f"{config.learning_rate}{' annealed' if config.anneal_lr else ''}, GAE "
              f"({config.gamma}, {config.gae_lambda}), clip {eps}, {config.num_seeds} seeds "
              f"vmapped. `eval_return`: mean return of {config.eval_envs} sampled episodes.")
  return loop.Program(init=lambda: init(keys), abstract=lambda: jax.eval_shape(init, keys),
                      chunk=jax.jit(jax.vmap(chunk_one)), evaluate=jax.jit(jax.vmap(evaluate_one)),
                      headline="eval_return", describe=describe)


def train_env(config, workdir: str) -> loop.TrainResult:
  """Trains (or resumes) PPO on the config's gymnax environment in `workdir`.

  Args:
    config: a validated "env" config (`experiments/configs/ppo_cartpole.py`).
    workdir: the run's directory (checkpoints/, metrics.jsonl, tb/, report.md).

  Returns:
    `loop.TrainResult`; the state is batched over `config.num_seeds`.
  """
  return loop.run_program(config, workdir, loop.cached_program(config, make_program))
