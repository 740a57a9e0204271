"""`make_update_step`: one jitted, pure optimizer step `(TrainState, batch) -> (TrainState, metrics)`.

Data parallelism is `jax.jit` over arrays placed with `NamedSharding` on a `Mesh` (GSPMD: the
compiler inserts the gradient all-reduce; Xu et al. 2021, "GSPMD"): the batch is split on the
mesh's `batch_axis`, the state is replicated, and `param_sharding` may split parameters (and the
optimizer state that mirrors them) over a second mesh axis. Gradient accumulation runs the loss on
`num_microbatches` equal contiguous slices of the batch inside the step with `lax.scan` and averages
their losses and gradients, so memory holds one micro-batch's activations at a time.

Exact accumulation: the step averages micro-batch losses, which equals the whole-batch loss when
the loss is a mean over examples (equal slices). For a token-mean loss (DAPO, `bnpo`, PPO) pass the
global count through `SequenceBatch.loss_normalizer` (see `estimators.aggregation`), divided by
the number of micro-batches because the step averages rather than sums:
`batch.replace(loss_normalizer=jnp.sum(batch.mask) / num_microbatches)`. Scalar (rank-0) batch
leaves such as this one are given unchanged to every micro-batch and replicated on the mesh.

Group statistics (GRPO, RLOO) see one micro-batch: keep whole groups inside a slice and renumber
`group_ids` into [0, slice size) in `loss_fn` (e.g. `group_ids - min(group_ids)`), or precompute
the advantages over the whole batch.

On virtual CPU devices (`jax_num_cpu_devices`), queuing tens of sharded steps without waiting can
deadlock XLA's CPU all-reduce (jax 0.10.2, 2 cores; plain `jax.jit` shows it too): wait on the
metrics every few steps (`jax.block_until_ready`), as a loop that logs them does anyway.
"""

import contextlib
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pgx_lab.train.state import TrainState

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def _path(path) -> str:
  """'batch[...]': a batch leaf's key path as text, for error messages."""
  return "batch" + jax.tree_util.keystr(path)


def _check_batch(batch: Any, num_microbatches: int, n_shards: int) -> None:
  """Raises ValueError naming the leaf unless every non-scalar leaf shares a divisible batch axis."""
  leaves = jax.tree_util.tree_flatten_with_path(batch)[0]
  sizes = {}
  for path, x in leaves:
    if not hasattr(x, "shape"):
      raise ValueError(f"`{_path(path)}` must be an array, got {type(x).__name__}.")
    if x.ndim > 0:
      sizes[_path(path)] = x.shape[0]
  if not sizes:
    raise ValueError("`batch` must have at least one leaf with a leading batch axis.")
  if len(set(sizes.values())) > 1:
    raise ValueError(f"`batch` leaves must share the leading (batch) axis size, got {sizes}.")
  b = next(iter(sizes.values()))
  if b % (num_microbatches * n_shards):
    raise ValueError(f"`batch` size {b} must be divisible by num_microbatches ({num_microbatches})"
                     f" times the mesh's batch-axis size ({n_shards}).")


def _param_specs(param_sharding: Any, params: Any, mesh) -> Any:
  """A pytree of PartitionSpecs with params' structure, checked against the mesh and shapes."""
  specs = param_sharding(params) if callable(param_sharding) else param_sharding
  is_spec = lambda s: isinstance(s, P) or s is None
  p_def = jax.tree.structure(params)
  s_leaves, s_def = jax.tree.flatten(specs, is_leaf=is_spec)
  if s_def != p_def:
    raise ValueError(f"`param_sharding` must give a PartitionSpec per parameter (structure "
                     f"{p_def}), got {s_def}.")
  out = []
  for spec, (path, x) in zip(s_leaves, jax.tree_util.tree_flatten_with_path(params)[0]):
    spec = P() if spec is None else spec
    if not isinstance(spec, P) or len(spec) > x.ndim:
      raise ValueError(f"`param_sharding` for params{jax.tree_util.keystr(path)} (shape "
                       f"{x.shape}) must be a PartitionSpec of rank <= {x.ndim}, got {spec!r}.")
    for dim, axes in enumerate(spec):
      axes = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
      size = 1
      for a in axes:
        if a not in mesh.shape:
          raise ValueError(f"`param_sharding` names mesh axis {a!r} not in {tuple(mesh.shape)}.")
        size *= mesh.shape[a]
      if x.shape[dim] % size:
        raise ValueError(f"`param_sharding`: params{jax.tree_util.keystr(path)} dim {dim} "
                         f"({x.shape[dim]}) is not divisible by mesh axes {axes} ({size}).")
    out.append(spec)
  return jax.tree.unflatten(p_def, out)


def make_update_step(loss_fn: Callable, optimizer: optax.GradientTransformation, *,
                     mesh: Optional[jax.sharding.Mesh] = None, batch_axis: str = "batch",
                     param_sharding: Any = None, num_microbatches: int = 1,
                     donate: bool = False) -> Callable:
  """Builds `update(state, batch) -> (new_state, metrics)`.

  Args:
    loss_fn: `loss_fn(params, batch, key) -> (loss, metrics)`, a scalar loss and a dict of scalar
      metrics, for a (micro-)batch; `key` is a PRNG key for this micro-batch.
    optimizer: an optax GradientTransformation; `state.opt_state` is its state.
    mesh: a `jax.sharding.Mesh` (build it with `AxisType.Auto` axes) or None for one device.
    batch_axis: the mesh axis the batch's leading axis is split over.
    param_sharding: None (replicated params), a pytree of PartitionSpecs with params' structure,
      or a callable `params -> that pytree`; needs `mesh`. The optimizer state's param-shaped
      parts (found with `optax.tree_map_params`) get the same specs; all else is replicated.
    num_microbatches: the batch is cut into this many equal contiguous slices; the step scans
      over them and averages losses, metrics and gradients.
    donate: donate the input state's buffers to the output state (the caller must not reuse it).

  Returns:
    `update(state, batch)`: `state` a `TrainState`, `batch` any pytree whose non-scalar leaves
    share a leading batch axis B divisible by num_microbatches (times the mesh's `batch_axis`
    size); rank-0 leaves go unchanged to every micro-batch. It splits `state.key` into
    (next key, step key), gives micro-batch m the key `jax.random.split(step_key, M)[m]`, applies
    the optimizer to the averaged gradient and increments `state.step`. Metrics: "loss",
    "grad_norm" (global norm of the averaged gradient) and loss_fn's metrics averaged over
    micro-batches. `update.jitted` is the underlying `jax.jit` object, `update.step_fn` the pure
    unjitted step (for use inside a caller's own jit / scan / vmap without a mesh).
  """
  if not callable(loss_fn):
    raise ValueError(f"`loss_fn` must be callable, got {type(loss_fn).__name__}.")
  if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
    raise ValueError(f"`optimizer` must be an optax GradientTransformation, got "
                     f"{type(optimizer).__name__}.")
  if isinstance(num_microbatches, bool) or not isinstance(num_microbatches, int) \
      or num_microbatches < 1:
    raise ValueError(f"`num_microbatches` must be an int >= 1, got {num_microbatches!r}.")
  if mesh is not None and not isinstance(mesh, jax.sharding.Mesh):
    raise ValueError(f"`mesh` must be a jax.sharding.Mesh or None, got {type(mesh).__name__}.")
  if mesh is not None and any(t != jax.sharding.AxisType.Auto for t in mesh.axis_types):
    raise ValueError(f"`mesh` axes must be AxisType.Auto (GSPMD propagation; the group "
                     f"statistics fail under Explicit axes, see BUILD.md), got {mesh.axis_types}.")
  if mesh is not None and batch_axis not in mesh.shape:
    raise ValueError(f"`batch_axis` {batch_axis!r} is not an axis of the mesh "
                     f"{tuple(mesh.shape)}.")
  if param_sharding is not None and mesh is None:
    raise ValueError("`param_sharding` needs a `mesh`.")
  n_shards = 1 if mesh is None else mesh.shape[batch_axis]
  m = num_microbatches

  def state_shardings(state: TrainState):
    """NamedShardings with `state`'s structure: replicated, params/opt_state per param_sharding."""
    rep = NamedSharding(mesh, P())
    if param_sharding is None:
      return jax.tree.map(lambda _: rep, state)
    p_shard = jax.tree.map(lambda s: NamedSharding(mesh, s),
                           _param_specs(param_sharding, state.params, mesh),
                           is_leaf=lambda s: isinstance(s, P))
    try:
      o_shard = optax.tree_map_params(optimizer, lambda _, s: s, state.opt_state, p_shard,
                                      transform_non_params=lambda _: rep)
    except Exception:  # an init that cannot take optax's placeholder: replicate its state
      o_shard = jax.tree.map(lambda _: rep, state.opt_state)
    return state.replace(step=rep, params=p_shard, opt_state=o_shard, key=rep,
                         extra=jax.tree.map(lambda _: rep, state.extra))

  def batch_shardings(batch):
    """Leading axis on `batch_axis` for every non-scalar leaf; scalars replicated."""
    return jax.tree.map(lambda x: NamedSharding(mesh, P(batch_axis) if x.ndim else P()), batch)

  def step_fn(state: TrainState, batch: Any) -> Tuple[TrainState, Dict[str, jax.Array]]:
    """The pure step (see make_update_step); jittable, vmappable."""
    _check_batch(batch, m, n_shards)
    next_key, step_key = jax.random.split(state.key)
    keys = jax.random.split(step_key, m)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    leaves, treedef = jax.tree.flatten(batch)
    sliced = [i for i, x in enumerate(leaves) if x.ndim]

    def micro(slices, key):
      mb = list(leaves)
      for i, x in zip(sliced, slices):
        mb[i] = x
      return grad_fn(state.params, jax.tree.unflatten(treedef, mb), key)

    if m == 1:
      (loss, metrics), grads = micro([leaves[i] for i in sliced], keys[0])
    else:
      xs = []
      for i in sliced:
        x = leaves[i].reshape((m, leaves[i].shape[0] // m) + leaves[i].shape[1:])
        if mesh is not None:  # every micro-batch spread over all devices
          x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, batch_axis)))
        xs.append(x)

      def body(acc, inp):
        (loss, metrics), g = micro(*inp)
        return jax.tree.map(lambda a, x: a + x.astype(a.dtype), acc, g), (loss, metrics)

      # Accumulate in at least float32 (bf16 params would lose the small micro-batch terms).
      acc_dtype = lambda p: jnp.promote_types(p.dtype, jnp.float32)
      zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, acc_dtype(p)), state.params)
      grads, (losses, metrics) = jax.lax.scan(body, zeros, (xs, keys))
      grads = jax.tree.map(lambda g, p: (g / m).astype(p.dtype), grads, state.params)
      loss = jnp.mean(losses)
      metrics = jax.tree.map(lambda v: jnp.mean(v, axis=0), metrics)

    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              key=next_key)
    if mesh is not None:
      new_state = jax.lax.with_sharding_constraint(new_state, state_shardings(new_state))
    metrics = dict(metrics)
    metrics["loss"] = loss
    metrics["grad_norm"] = optax.tree.norm(grads)
    return new_state, metrics

  jitted = jax.jit(step_fn, donate_argnums=(0,) if donate else ())
  cache = {}

  def place(tree, shardings):
    """`tree` on `shardings`; skips device_put when every leaf is already there."""
    leaves, targets = jax.tree.leaves(tree), jax.tree.leaves(shardings)
    if all(isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)
           and x.sharding == t for x, t in zip(leaves, targets)):
      return tree
    return jax.device_put(tree, shardings)

  def update(state: TrainState, batch: Any) -> Tuple[TrainState, Dict[str, jax.Array]]:
    """One optimizer step; places state and batch on the mesh first (a no-op when placed)."""
    _check_batch(batch, m, n_shards)
    if mesh is not None:  # shardings cached per structure and shapes
      sig = (jax.tree.structure(state),
             tuple(getattr(x, "shape", None) for x in jax.tree.leaves(state.params)))
      if sig not in cache:
        cache[sig] = state_shardings(state)
      state = place(state, cache[sig])
      batch = place(batch, batch_shardings(batch))
    return jitted(state, batch)

  update.jitted = jitted
  update.step_fn = step_fn
  update.state_shardings = state_shardings if mesh is not None else None
  return update


@contextlib.contextmanager
def count_compilations():
  """Counts XLA backend compilations in the block: `with count_compilations() as n: ...; n[0]`.

  Listens to JAX's '/jax/core/compile/backend_compile_duration' monitoring event; every compile
  in the process during the block counts (device_put resharding programs included).
  """
  count = [0]

  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == COMPILE_EVENT:
      count[0] += 1

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield count
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
