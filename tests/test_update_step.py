"""`make_update_step` on 4 virtual CPU devices (set in conftest).

References are independent: the single-device step is checked against `jax.grad` + optax written
out here; the sharded, accumulated and param-sharded steps are checked against the single-device,
full-batch step.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pgx_lab import SequenceBatch
from pgx_lab import presets
from pgx_lab.estimators import likelihood
from pgx_lab.train.state import TrainState
from pgx_lab.train.update import count_compilations
from pgx_lab.train.update import make_update_step

B, T, S, H, V, G = 16, 6, 5, 8, 7, 4   # batch, tokens, states, hidden, actions, group size
TOL = dict(rtol=2e-5, atol=2e-6)
AUTO = jax.sharding.AxisType.Auto


def policy_logp(params, states, actions):
  """A 2-layer MLP softmax policy over one-hot tabular states; log pi(a | s), [B, T]."""
  h = jnp.tanh(jax.nn.one_hot(states, S) @ params["w1"] + params["b1"])
  return likelihood.token_logp(h @ params["w2"] + params["b2"], actions)


def make_problem(seed=0):
  rng = np.random.default_rng(seed)
  f32 = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  params = {"w1": f32(S, H), "b1": 0.1 * f32(H), "w2": f32(H, V), "b2": 0.1 * f32(V)}
  states = jnp.asarray(rng.integers(0, S, (B, T)), jnp.int32)
  actions = jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32)
  lengths = rng.integers(1, T + 1, B)
  mask = jnp.asarray(np.arange(T)[None, :] < lengths[:, None], jnp.float32)
  old_params = jax.tree.map(lambda x: x + 0.3 * f32(*x.shape), params)
  seq = SequenceBatch(mask=mask, old_logp=policy_logp(old_params, states, actions),
                      ref_logp=policy_logp(old_params, states, actions) - 0.1,
                      rewards=jnp.asarray(rng.integers(0, 2, B), jnp.float32),
                      group_ids=jnp.asarray(np.arange(B) // G, jnp.int32))
  return params, {"states": states, "actions": actions, "seq": seq}


def grpo_loss(loss_type="grpo"):
  est = presets.grpo(loss_type, kl_beta=0.04)

  def loss_fn(params, batch, key):
    del key
    seq = batch["seq"]
    # Group ids local to the (micro-)batch, as the segment sums over B rows need.
    seq = seq.replace(group_ids=seq.group_ids - jnp.min(seq.group_ids))
    return est(policy_logp(params, batch["states"], batch["actions"]), seq)

  return loss_fn


OPT = optax.adam(0.05)


def fresh_state(params, seed=1):
  return TrainState.create(params, OPT, jax.random.key(seed))


def assert_trees_close(a, b, **tol):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(la, lb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **(tol or TOL))


def assert_results_close(res, ref):
  (state, metrics), (ref_state, ref_metrics) = res, ref
  assert_trees_close(state.params, ref_state.params)
  assert_trees_close(state.opt_state, ref_state.opt_state)
  assert int(state.step) == int(ref_state.step)
  np.testing.assert_array_equal(jax.random.key_data(state.key), jax.random.key_data(ref_state.key))
  for k in ("loss", "grad_norm"):
    np.testing.assert_allclose(metrics[k], ref_metrics[k], **TOL, err_msg=k)


@pytest.fixture(scope="module")
def problem():
  return make_problem()


@pytest.fixture(scope="module")
def single(problem):
  """The single-device, full-batch GRPO step: the reference of the other tests."""
  params, batch = problem
  return make_update_step(grpo_loss(), OPT)(fresh_state(params), batch)


def test_single_device_step_equals_hand_written_step(problem, single):
  params, batch = problem
  key = jax.random.key(1)
  next_key, step_key = jax.random.split(key)
  (loss, metrics), grads = jax.value_and_grad(grpo_loss(), has_aux=True)(
      params, batch, jax.random.split(step_key, 1)[0])
  updates, opt_state = OPT.update(grads, OPT.init(params), params)
  want_params = optax.apply_updates(params, updates)
  state, got = single
  assert_trees_close(state.params, want_params)
  assert_trees_close(state.opt_state, opt_state)
  assert int(state.step) == 1
  np.testing.assert_array_equal(jax.random.key_data(state.key), jax.random.key_data(next_key))
  np.testing.assert_allclose(got["loss"], loss, **TOL)
  np.testing.assert_allclose(got["grad_norm"], np.sqrt(sum(
      np.sum(np.asarray(g) ** 2) for g in jax.tree.leaves(grads))), **TOL)
  for k in metrics:
    np.testing.assert_allclose(got[k], metrics[k], **TOL, err_msg=k)
  assert float(got["grad_norm"]) > 1e-3
  assert not np.allclose(state.params["w2"], params["w2"])


def test_batch_sharded_step_equals_single_device(problem, single):
  params, batch = problem
  mesh = jax.make_mesh((4,), ("batch",), axis_types=(AUTO,))
  update = make_update_step(grpo_loss(), OPT, mesh=mesh)
  state, metrics = update(fresh_state(params), batch)
  assert_results_close((state, metrics), single)
  for k in single[1]:
    np.testing.assert_allclose(metrics[k], single[1][k], **TOL, err_msg=k)
  for leaf in jax.tree.leaves((state.params, state.opt_state)):
    assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 4


@pytest.mark.parametrize("use_mesh", [False, True])
def test_microbatches_equal_full_batch_for_example_mean_loss(problem, single, use_mesh):
  """GRPO's seq-mean aggregation is a mean over examples: 4 slices of one group each (2 with the
  mesh, so that each slice still splits over 4 devices) average to the full-batch step."""
  params, batch = problem
  mesh = jax.make_mesh((4,), ("batch",), axis_types=(AUTO,)) if use_mesh else None
  m = 2 if use_mesh else 4
  loss_fn = grpo_loss()
  state, metrics = make_update_step(loss_fn, OPT, mesh=mesh, num_microbatches=m)(
      fresh_state(params), batch)
  assert_results_close((state, metrics), single)
  # Other metrics are the mean over micro-batches of loss_fn's metrics on each slice.
  slices = [jax.tree.map(lambda x, i=i: x[i * B // m:(i + 1) * B // m], batch) for i in range(m)]
  per = [loss_fn(params, s, None)[1] for s in slices]
  for k in per[0]:
    np.testing.assert_allclose(metrics[k], np.mean([p[k] for p in per]), **TOL, err_msg=k)


def test_token_mean_loss_is_exact_with_loss_normalizer(problem):
  """DAPO's token mean: slices hold different token counts, so averaging slice token-means is
  not the batch token mean; `loss_normalizer = tokens / M` (a scalar leaf) makes it exact."""
  params, batch = problem
  loss_fn, m = grpo_loss("dapo"), 4
  tokens = np.asarray(batch["seq"].mask).reshape(m, -1).sum(axis=1)
  assert len(set(tokens.tolist())) > 1
  ref = make_update_step(loss_fn, OPT)(fresh_state(params), batch)
  np.testing.assert_allclose(ref[1]["loss"], loss_fn(params, batch, None)[0], **TOL)

  def with_norm(k):
    return {**batch, "seq": batch["seq"].replace(loss_normalizer=jnp.sum(batch["seq"].mask) / k)}

  accumulate = make_update_step(loss_fn, OPT, num_microbatches=m)
  assert_results_close(accumulate(fresh_state(params), with_norm(m)), ref)
  assert_results_close(make_update_step(loss_fn, OPT)(fresh_state(params), with_norm(1)), ref)
  naive = accumulate(fresh_state(params), batch)
  assert not np.allclose(naive[1]["loss"], ref[1]["loss"], rtol=1e-3)
  assert not np.allclose(naive[1]["grad_norm"], ref[1]["grad_norm"], rtol=1e-3)


@pytest.mark.parametrize("use_mesh", [False, True])
def test_second_call_does_not_recompile(problem, use_mesh):
  params, batch = problem
  mesh = jax.make_mesh((4,), ("batch",), axis_types=(AUTO,)) if use_mesh else None
  update = make_update_step(grpo_loss(), OPT, mesh=mesh, num_microbatches=2)
  state = fresh_state(params)
  other = jax.tree.map(lambda x: x[::-1], batch)              # same shapes, other values
  if use_mesh:                                                # place first: device_put reshards
    state = jax.device_put(state, update.state_shardings(state))   # compile programs of their own
    batch, other = jax.device_put((batch, other), NamedSharding(mesh, P("batch")))
  with count_compilations() as n:
    state1, _ = update(state, batch)
    state2, metrics = update(state1, other)
    jax.block_until_ready(state2)
  assert n[0] == 1
  assert update.jitted._cache_size() == 1
  assert int(state2.step) == 2 and np.isfinite(metrics["loss"])
  with count_compilations() as n:                             # the counter does count compiles
    make_update_step(grpo_loss(), OPT)(state2, jax.tree.map(lambda x: x[:8], batch))
  assert n[0] >= 1


def test_param_sharding_on_model_axis_equals_replicated(problem, single):
  params, batch = problem
  mesh = jax.make_mesh((2, 2), ("batch", "model"), axis_types=(AUTO, AUTO))
  specs = {"w1": P(None, "model"), "b1": P("model"), "w2": P("model", None), "b2": P()}
  replicated = make_update_step(grpo_loss(), OPT, mesh=mesh)(fresh_state(params), batch)
  assert_results_close(replicated, single)
  for param_sharding in (specs, lambda p: jax.tree.map(lambda _: None, p) | specs):
    update = make_update_step(grpo_loss(), OPT, mesh=mesh, param_sharding=param_sharding)
    state, metrics = update(fresh_state(params), batch)
    assert_results_close((state, metrics), replicated)
    adam = state.opt_state[0]
    for tree in (state.params, adam.mu, adam.nu):              # optimizer state follows params
      for name, spec in specs.items():
        assert tree[name].sharding.is_equivalent_to(NamedSharding(mesh, spec), tree[name].ndim)
    assert state.params["w1"].addressable_shards[0].data.shape == (S, H // 2)
    assert adam.nu["w2"].addressable_shards[0].data.shape == (H // 2, V)
    assert adam.count.sharding.is_fully_replicated


def test_step_key_and_purity(problem):
  """Micro-batch m gets split(step_key, M)[m] with (next_key, step_key) = split(state.key)."""
  params, batch = problem
  base = grpo_loss()

  def loss_fn(params, batch, key):
    loss, metrics = base(params, batch, key)
    return loss, {**metrics, "u": jax.random.uniform(key)}

  m = 4
  update = make_update_step(loss_fn, OPT, num_microbatches=m)
  state = fresh_state(params, seed=7)
  new_state, metrics = update(state, batch)
  next_key, step_key = jax.random.split(jax.random.key(7))
  np.testing.assert_array_equal(jax.random.key_data(new_state.key), jax.random.key_data(next_key))
  want_u = np.mean([jax.random.uniform(k) for k in jax.random.split(step_key, m)])
  np.testing.assert_allclose(metrics["u"], want_u, rtol=1e-6)
  assert int(new_state.step) == 1 and int(update(new_state, batch)[0].step) == 2

  again_state, again = update(state, batch)                   # same inputs -> same outputs
  for x, y in zip(jax.tree.leaves((new_state, metrics)), jax.tree.leaves((again_state, again))):
    x, y = (jax.random.key_data(x), jax.random.key_data(y)) if jnp.issubdtype(
        x.dtype, jax.dtypes.prng_key) else (x, y)
    np.testing.assert_array_equal(x, y)
  traced_state, traced = jax.jit(update.step_fn)(state, batch)   # the step under a caller's jit
  assert_results_close((traced_state, traced), (new_state, metrics))

  donating = make_update_step(loss_fn, OPT, num_microbatches=m, donate=True)
  copy = jax.tree.map(jnp.copy, state)
  assert_results_close(donating(copy, batch), (new_state, metrics))


def test_step_fn_vmaps_over_seeds(problem):
  """`update.step_fn` under `jit(vmap)` over 3 seeds' states equals 3 separate steps."""
  params, batch = problem
  update = make_update_step(grpo_loss(), OPT, num_microbatches=2)
  states = [fresh_state(jax.tree.map(lambda x, s=s: x * (1.0 + 0.1 * s), params), seed=s)
            for s in range(3)]
  stacked = jax.tree.map(lambda *x: jnp.stack(x), *states)
  batches = jax.tree.map(lambda x: jnp.stack([x] * 3), batch)
  v_state, v_metrics = jax.jit(jax.vmap(update.step_fn))(stacked, batches)
  for s, state in enumerate(states):
    one = jax.tree.map(lambda x, s=s: x[s], (v_state, v_metrics))
    assert_results_close(one, update(state, batch))


def test_bad_input_raises_value_error_naming_argument(problem):
  params, batch = problem
  mesh = jax.make_mesh((2, 2), ("batch", "model"), axis_types=(AUTO, AUTO))
  loss_fn, state = grpo_loss(), fresh_state(params)
  with pytest.raises(ValueError, match="num_microbatches"):
    make_update_step(loss_fn, OPT, num_microbatches=0)
  with pytest.raises(ValueError, match="batch_axis"):
    make_update_step(loss_fn, OPT, mesh=mesh, batch_axis="data")
  with pytest.raises(ValueError, match="mesh"):
    make_update_step(loss_fn, OPT, mesh=jax.make_mesh((4,), ("batch",)))   # Explicit axes
  with pytest.raises(ValueError, match="param_sharding"):
    make_update_step(loss_fn, OPT, param_sharding={"w1": P()})
  with pytest.raises(ValueError, match="optimizer"):
    make_update_step(loss_fn, "adam")
  with pytest.raises(ValueError, match="batch"):
    make_update_step(loss_fn, OPT, num_microbatches=3)(state, batch)
  with pytest.raises(ValueError, match=r"batch\['states'\]"):
    make_update_step(loss_fn, OPT)(state, {**batch, "states": batch["states"][:8]})
  bad_specs = [{"w1": P(None, "tensor"), "b1": P(), "w2": P(), "b2": P()},
               {"w1": P(None, None, "model"), "b1": P(), "w2": P(), "b2": P()},
               {"w1": P("model"), "b1": P(), "w2": P(), "b2": P()},   # S = 5 rows over 2
               {"w1": P()}]
  for specs in bad_specs:
    with pytest.raises(ValueError, match="param_sharding"):
      make_update_step(loss_fn, OPT, mesh=mesh, param_sharding=specs)(state, batch)
