"""The benchmarks compare like with like: their peers compute what pgx_lab computes.

Timing is not asserted here (speed lives in BENCHMARKS.md); these tests keep the benchmark
scripts runnable and their equivalence checks true.
"""

import jax
import numpy as np
import pytest

from benchmarks import grpo_step
from benchmarks import ppo_cartpole
from pgx_lab.train import loop
from pgx_lab.train.state import TrainState


def test_grpo_step_equals_the_hand_written_step_over_two_updates():
  model = grpo_step.make_model("small")
  params, data = grpo_step.make_data(jax.random.PRNGKey(0), model)
  optimizer = loop.make_optimizer(grpo_step.LR, 1.0)
  state = TrainState.create(params, optimizer, jax.random.PRNGKey(2))
  pgx = grpo_step.pgx_step(model)
  plain = grpo_step.plain_step(model, optimizer)
  opt_state = state.opt_state
  for _ in range(2):
    state, metrics = pgx(state, data)
    params, opt_state, value = plain(params, opt_state, data)
    np.testing.assert_allclose(metrics["loss"], value, rtol=1e-4, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               state.params, params)
  # The batch is not degenerate: the update moved the params.
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), state.params,
                       grpo_step.make_data(jax.random.PRNGKey(0), model)[0])
  assert max(jax.tree.leaves(moved)) > 1e-5


def test_grpo_step_benchmark_runs_and_writes_its_table(tmp_path):
  out = tmp_path / "grpo.json"
  grpo_step.main(["--sizes=small", "--repeats=1", "--min-sample-ms=1", f"--out={out}"])
  assert out.exists() and "| small |" in out.read_text()


def test_grpo_step_benchmark_refuses_an_unknown_size():
  with pytest.raises(SystemExit):
    grpo_step.parse_args(["--sizes=huge"])


def test_ppo_benchmark_explains_where_to_get_purejaxrl(tmp_path):
  with pytest.raises(SystemExit, match="git clone https://github.com/luchris429/purejaxrl"):
    ppo_cartpole.load_purejaxrl(str(tmp_path))


def test_ppo_benchmark_shim_returns_purejaxrl_five_values():
  import gymnax  # pylint: disable=import-outside-toplevel
  env, params = gymnax.make("CartPole-v1")
  shim = ppo_cartpole._FiveValueEnv(env)  # pylint: disable=protected-access
  key = jax.random.PRNGKey(0)
  _, state = shim.reset(key, params)
  out = shim.step(key, state, 0, params)
  assert len(out) == 5
  full = env.step(key, state, 0, params)
  assert bool(out[3]) == bool(full[3] | full[4])
  assert shim.num_actions == env.num_actions


def test_second_order_benchmark_runs_and_counts_flops(tmp_path):
  import json  # pylint: disable=import-outside-toplevel
  from benchmarks import second_order  # pylint: disable=import-outside-toplevel
  out = tmp_path / "so.json"
  second_order.main(["--repeats=1", "--min-sample-ms=1", "--models=mlp", f"--out={out}"])
  row = json.loads(out.read_text())["rows"][0]
  # Forward-over-reverse: more flops than one gradient, fewer than four.
  assert 1.5 < row["hvp_over_grad_flops"] < 4.0
  assert row["hvp_ms"] > 0 and row["harpg_ms"] > 0
