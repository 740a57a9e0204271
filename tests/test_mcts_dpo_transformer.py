"""The causal-transformer policy of the mcts_dpo module (experiments/papers/_mcts_dpo_transformer).

Independent computations: the transformer's logits from `pgx_lab.models.transformer.apply` on the
whole sequence, reduced in numpy (log-softmax over the V digit ids, products over positions), and
a Monte Carlo estimate from the policy's own sampler.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.papers import _mcts_dpo_policies as policies
from experiments.papers._mcts_dpo_transformer import TransformerPolicy
from pgx_lab.models import transformer
from pgx_lab.rollout.step_search import StepState


def _random_params(policy, seed):
  """Init params with a random output head (the zeroed head would make every step uniform)."""
  params = policy.init(jax.random.key(seed))
  head = params["head"]
  k1, k2 = jax.random.split(jax.random.key(seed + 100))
  params["head"] = {"kernel": jax.random.normal(k1, head["kernel"].shape),
                    "bias": jax.random.normal(k2, head["bias"].shape)}
  return params


def _np_digit_logp(policy, params, target, tokens):
  """[T, V] numpy log pi(digit | g, y_<t) from one `transformer.apply` on [V + g, tokens]."""
  task = policy.task
  seq = np.concatenate([[task.v + target], tokens]).astype(np.int32)[None]
  logits = np.asarray(transformer.apply(params, policy.config, jnp.asarray(seq))[0][0],
                      np.float64)[:task.t, :task.v]
  m = logits.max(-1, keepdims=True)
  return logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))


def test_step_logp_is_sum_of_token_logps():
  task = policies.Task(digits=3, num_steps=3, step_len=2, candidates=4)
  policy = TransformerPolicy(task)
  params = _random_params(policy, 0)
  model = policies.step_model(task, policy)
  table = (jnp.zeros((task.s + 1, task.d + 1, task.s + 1)),) * 2
  prefix = np.array([2, 0, 1, 0, 0, 0], np.int32)  # depth 1: [2, 0], then junk (causal mask)
  target, length = 5, 2
  state = StepState(jnp.asarray(prefix), jnp.asarray(length), jnp.asarray(1),
                    (jnp.asarray(target), jnp.asarray(2)))
  steps, logp = jax.jit(model.propose)((params, table), jax.random.key(3), state)
  steps, logp = np.asarray(steps), np.asarray(logp)
  assert steps.shape == (task.c, task.k)
  for step, lp in zip(steps, logp):
    row = prefix.copy()
    row[length:length + task.k] = step
    ref = _np_digit_logp(policy, params, target, row)
    expect = sum(ref[length + i, step[i]] for i in range(task.k))
    np.testing.assert_allclose(lp, expect, rtol=1e-4, atol=1e-4)
  # A full response scored in one forward, against the numpy reduction.
  row = np.array([1, 2, 0, 0, 2, 1], np.int32)
  ref = _np_digit_logp(policy, params, 7, row)
  got = np.asarray(policy.token_logp(params, jnp.asarray(row), 7))
  np.testing.assert_allclose(got, ref[np.arange(task.t), row], rtol=1e-4, atol=1e-4)
  # The per-state logits used by sampling agree with the same forward.
  for pos in range(task.t):
    lg = np.asarray(policy.logits(params, 7, pos, 0, jnp.asarray(row)))
    lg = lg - lg.max()
    np.testing.assert_allclose(lg - np.log(np.exp(lg).sum()), ref[pos], rtol=1e-4, atol=1e-4)


def test_enumerated_accuracy_brute_force_and_monte_carlo():
  task = policies.Task(digits=2, num_steps=2, step_len=1, candidates=2)  # T=2, 3 targets
  policy = TransformerPolicy(task, d_model=16, num_heads=2)
  params = _random_params(policy, 1)
  # Brute force: every (target, response) through its own forward pass.
  probs = np.zeros((task.s + 1, task.v ** task.t))
  for g in range(task.s + 1):
    for j, y in enumerate(itertools.product(range(task.v), repeat=task.t)):
      ref = _np_digit_logp(policy, params, g, np.array(y))
      probs[g, j] = np.exp(sum(ref[t, y[t]] for t in range(task.t)))
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(np.exp(np.asarray(policy.response_logp(params))), probs, atol=1e-5)
  hit = np.array([[sum(y) == g for y in itertools.product(range(task.v), repeat=task.t)]
                  for g in range(task.s + 1)])
  exact = float(policy.accuracy(params))
  np.testing.assert_allclose(exact, (probs * hit).sum(-1).mean(), atol=1e-5)
  entropy = -(probs * np.log(probs)).sum(-1).mean()
  np.testing.assert_allclose(float(policy.response_entropy(params)), entropy, atol=1e-4)
  # Monte Carlo through the sampler: success frequency within 4 standard errors.
  n = 4000
  row = jnp.zeros((task.t,), jnp.int32)
  sample = jax.jit(jax.vmap(jax.vmap(
      lambda k, g: policy.sample_tokens(params, k, g, row, 0, 0, task.t)[0],
      in_axes=(0, None)), in_axes=(0, 0)))
  keys = jax.random.split(jax.random.key(2), (task.s + 1) * n).reshape(task.s + 1, n)
  ys = np.asarray(sample(keys, jnp.arange(task.s + 1)))
  freq = (ys.sum(-1) == np.arange(task.s + 1)[:, None]).mean()
  se = np.sqrt(exact * (1 - exact) / (n * (task.s + 1)))
  assert abs(freq - exact) < 4 * se + 1e-3


def test_init_is_uniform():
  task = policies.Task(digits=3, num_steps=3, step_len=2, candidates=2)
  policy = TransformerPolicy(task)
  params = jax.jit(policy.init)(jax.random.key(0))
  # Uniform responses: mean over targets of P(sum = g) = 1 / (S + 1); entropy T ln V.
  np.testing.assert_allclose(float(jax.jit(policy.accuracy)(params)), 1 / (task.s + 1),
                             rtol=1e-5)
  np.testing.assert_allclose(float(jax.jit(policy.response_entropy)(params)),
                             task.t * np.log(task.v), rtol=1e-5)


def test_bad_input():
  task = policies.Task(digits=3, num_steps=3, step_len=2, candidates=2)
  with pytest.raises(ValueError, match="task"):
    TransformerPolicy("chain")
  with pytest.raises(ValueError, match="d_model"):
    TransformerPolicy(task, d_model=30, num_heads=4)
  with pytest.raises(ValueError, match="num_layers"):
    TransformerPolicy(task, num_layers=0)
  policy = TransformerPolicy(task)
  params = policy.init(jax.random.key(0))
  with pytest.raises(ValueError, match="tokens"):
    policy.token_logp(params, jnp.zeros((2, task.t), jnp.int32), 0)
  with pytest.raises(ValueError, match="tokens"):
    policy.token_logp(params, jnp.zeros((task.t,), jnp.float32), 0)
  with pytest.raises(ValueError, match="tokens"):
    policy.logits(params, 0, 0, 0, jnp.zeros((task.t + 1,), jnp.int32))
