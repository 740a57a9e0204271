"""REINFORCE (Williams 1992) on a finite-horizon Garnet MDP, vmapped over seeds, with the exact J.

The policy is a tabular softmax pi(a|s) = softmax(theta[s]) with theta [S, A] starting at 0 (the
uniform policy). Each update samples `batch_size` trajectories of `horizon` steps
(`envs.tabular.sample_trajectories`), weights each sum of log-probs by its discounted return minus
the baseline (`estimators.presets.reinforce`) and takes an Adam step (`train.update`). Because the
MDP's horizon equals the rollout length, the sampled objective is exactly the MDP's J, which
`envs.tabular.expected_return` computes in closed form: the logged `exact_J` has no Monte-Carlo
noise, and `optimal_J` (value iteration) bounds it.
"""

import jax
import jax.numpy as jnp

from pgx_lab import types
from pgx_lab.envs import tabular
from pgx_lab.envs import tabular_generators
from pgx_lab.estimators import presets
from pgx_lab.train import loop
from pgx_lab.train.state import TrainState
from pgx_lab.train.update import make_update_step


def make_mdp(config) -> tabular.TabularMDP:
  """The config's MDP: `garnet(PRNGKey(mdp_seed), num_states, num_actions, branching, gamma,
  horizon)`."""
  return tabular_generators.garnet(jax.random.PRNGKey(config.mdp_seed), config.num_states,
                                   config.num_actions, config.branching, gamma=config.gamma,
                                   horizon=config.horizon)


def make_program(config) -> loop.Program:
  """The tabular REINFORCE `Program` of a validated "tabular" config."""
  mdp = make_mdp(config)
  estimator = presets.reinforce(config.baseline, gamma=config.gamma)
  optimizer = loop.make_optimizer(config.learning_rate, config.max_grad_norm)
  b, h = config.batch_size, config.horizon
  discount = config.gamma ** jnp.arange(h, dtype=jnp.float32)

  def loss_fn(params, batch, key):
    """REINFORCE loss of trajectories: batch["states"], ["actions"] [B, H], ["seq"] the
    SequenceBatch (mask, old_logp, per-step rewards)."""
    del key
    logp_all = jax.nn.log_softmax(params, axis=-1)
    logp = logp_all[batch["states"], batch["actions"]]
    return estimator(logp, batch["seq"])

  update = make_update_step(loss_fn, optimizer).step_fn

  def one_update(state, _):
    state, k = loop.split_key(state)
    ro = tabular.sample_trajectories(k, mdp, jax.nn.softmax(state.params, axis=-1), b, h)
    seq = types.SequenceBatch(mask=ro.mask, old_logp=ro.logp, rewards=ro.rewards,
                              group_ids=jnp.zeros((b,), jnp.int32))
    state, metrics = update(state, {"states": ro.states, "actions": ro.actions, "seq": seq})
    metrics["sampled_return"] = jnp.mean(ro.rewards @ discount)
    return state, metrics

  def chunk_one(state):
    state, metrics = jax.lax.scan(one_update, state, None, length=config.chunk_size)
    return state, loop.mean_over_chunk(metrics)

  optimal = float(tabular.value_iteration(mdp).j)

  def evaluate_one(state):
    j = tabular.expected_return(mdp, jax.nn.softmax(state.params, axis=-1))
    return {"exact_J": j, "gap": optimal - j}

  def init_one(key):
    return TrainState.create(jnp.zeros((config.num_states, config.num_actions), jnp.float32),
                             optimizer, key)

  keys = loop.seed_keys(config.seed, config.num_seeds)
  init = jax.jit(jax.vmap(init_one))
  describe = (f"REINFORCE (Williams 1992, baseline `{config.baseline}`) with a tabular softmax "
              f"policy on a Garnet({config.num_states}, {config.num_actions}, {config.branching})"
              f" MDP, horizon {h}, gamma {config.gamma}; {b} trajectories per update, Adam lr "
              f"{config.learning_rate}, {config.num_seeds} seeds. `exact_J` is the closed-form "
              f"expected return of the current policy; the optimal J is {optimal:.4f}.")
  return loop.Program(init=lambda: init(keys), abstract=lambda: jax.eval_shape(init, keys),
                      chunk=jax.jit(jax.vmap(chunk_one)), evaluate=jax.jit(jax.vmap(evaluate_one)),
                      headline="exact_J", describe=describe)


def train_tabular(config, workdir: str) -> loop.TrainResult:
  """Trains (or resumes) REINFORCE on the config's tabular MDP in `workdir`.

  Args:
    config: a validated "tabular" config (`experiments/configs/reinforce_tabular.py`).
    workdir: the run's directory (checkpoints/, metrics.jsonl, tb/, report.md).

  Returns:
    `loop.TrainResult`; the state is batched over `config.num_seeds` (params [seeds, S, A]).
  """
  return loop.run_program(config, workdir, loop.cached_program(config, make_program))
