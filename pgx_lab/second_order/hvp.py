"""Hessian-vector products of any scalar loss of a params pytree, matrix-free.

The product H(theta) v = d/de grad L(theta + e v) |_{e=0} is computed forward-over-reverse:
`jax.jvp` of `jax.grad(L)` at theta along v (Pearlmutter 1994, "Fast exact multiplication by the
Hessian"; the JAX autodiff cookbook recommends this order). One call costs about two to three
gradient evaluations and never forms H, so it works for a policy network of any size.
"""

from typing import Any, Callable, Tuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def check_like(name: str, tree: PyTree, like: PyTree, like_name: str = "params") -> None:
  """Raises ValueError naming `name` unless `tree` has the structure, shapes and float dtypes of
  `like` (both pytrees of arrays)."""
  s_tree, s_like = jax.tree.structure(tree), jax.tree.structure(like)
  if s_tree != s_like:
    raise ValueError(f"`{name}` must have the pytree structure of `{like_name}`: got {s_tree}, "
                     f"expected {s_like}.")
  for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(like)):
    if not hasattr(a, "shape") or tuple(np.shape(a)) != tuple(np.shape(b)):
      raise ValueError(f"`{name}` leaves must match `{like_name}` leaf shapes: got "
                       f"{np.shape(a)}, expected {np.shape(b)}.")
    if not jnp.issubdtype(jnp.result_type(a), jnp.floating):
      raise ValueError(f"`{name}` leaves must be float arrays, got dtype {jnp.result_type(a)}.")


def _check_params(params: PyTree) -> None:
  leaves = jax.tree.leaves(params)
  if not leaves:
    raise ValueError("`params` must be a non-empty pytree of float arrays.")
  for a in leaves:
    if not hasattr(a, "shape") or not jnp.issubdtype(jnp.result_type(a), jnp.floating):
      raise ValueError(f"`params` leaves must be float arrays, got {type(a).__name__}.")


def hvp(loss_fn: Callable[..., jax.Array], params: PyTree, v: PyTree, *args, **kwargs) -> PyTree:
  """H v with H = the Hessian of `loss_fn` w.r.t. its first argument at `params`.

  Args:
    loss_fn: `loss_fn(params, *args, **kwargs) -> scalar`, differentiable twice in params.
    params: pytree of float arrays (any shapes).
    v: pytree with the structure and leaf shapes of `params` (the direction).
    *args, **kwargs: further arguments of `loss_fn`, held fixed (not differentiated).
  Returns:
    H v, a pytree like `params`.
  Raises:
    ValueError naming `params` or `v` on a bad pytree (before anything is traced).
  """
  return grad_and_hvp(loss_fn, params, v, *args, **kwargs)[1]


def grad_and_hvp(loss_fn: Callable[..., jax.Array], params: PyTree, v: PyTree, *args,
                 **kwargs) -> Tuple[PyTree, PyTree]:
  """(grad L(params), H v) from one forward-over-reverse pass; arguments as in `hvp`."""
  _check_params(params)
  check_like("v", v, params)
  grad_fn = jax.grad(lambda p: loss_fn(p, *args, **kwargs))
  v = jax.tree.map(lambda a, b: jnp.asarray(a, jnp.result_type(b)), v, params)
  return jax.jvp(grad_fn, (params,), (v,))


def tree_vdot(a: PyTree, b: PyTree) -> jax.Array:
  """<a, b> summed over all leaves of two pytrees of the same structure (scalar)."""
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def tree_norm(a: PyTree) -> jax.Array:
  """Global 2-norm of a pytree (scalar)."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(a)))
