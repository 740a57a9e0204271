"""Input checks that run at trace time and raise a `ValueError` naming the argument.

Shapes and dtypes are static under `jax.jit`, so these checks fire before anything compiles.
chex asserts raise `AssertionError`; the library promises `ValueError`, hence these helpers.
"""

from typing import Any, Iterable, Optional, Sequence

import jax.numpy as jnp
import numpy as np


def _describe(x: Any) -> str:
  shape = getattr(x, "shape", None)
  dtype = getattr(x, "dtype", None)
  return f"shape {tuple(shape) if shape is not None else None}, dtype {dtype}"


def check_array(
    name: str,
    x: Any,
    *,
    ndim: Optional[Iterable[int]] = None,
    kind: str = "float",
) -> None:
  """Checks that `x` is an array of one of the ranks `ndim` and of dtype kind `kind`.

  Args:
    name: the argument's name, used in the error message.
    x: the value to check.
    ndim: allowed ranks (an int or an iterable of ints); None allows any rank.
    kind: "float", "int", "number" (int, float or bool) or "any".

  Raises:
    ValueError: naming `name`, if `x` is not an array, has another rank, or another dtype kind.
  """
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    raise ValueError(f"`{name}` must be an array, got {type(x).__name__}.")
  if ndim is not None:
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if x.ndim not in allowed:
      raise ValueError(f"`{name}` must have rank in {allowed}, got {_describe(x)}.")
  dtype = np.dtype(x.dtype)
  ok = {
      "float": jnp.issubdtype(dtype, jnp.floating),
      "int": jnp.issubdtype(dtype, jnp.integer),
      "number": jnp.issubdtype(dtype, jnp.number) or dtype == np.bool_,
      "any": True,
  }
  if kind not in ok:
    raise ValueError(f"unknown dtype kind {kind!r} for `{name}`.")
  if not ok[kind]:
    raise ValueError(f"`{name}` must have a {kind} dtype, got {_describe(x)}.")


def check_shape(name: str, x: Any, shape: Sequence[int], *, against: str = "") -> None:
  """Checks that `x.shape == shape`; `against` names what the shape came from."""
  if tuple(x.shape) != tuple(shape):
    src = f" (the shape of `{against}`)" if against else ""
    raise ValueError(f"`{name}` must have shape {tuple(shape)}{src}, got {_describe(x)}.")


def require(name: str, x: Any, needed_by: str) -> Any:
  """Returns `x`, or raises a ValueError saying that `needed_by` needs the field `name`."""
  if x is None:
    raise ValueError(f"`{name}` is required by {needed_by} but was not given (None).")
  return x


def check_option(name: str, value: Any, options: Iterable[Any]) -> None:
  """Checks that `value` is one of `options`."""
  options = tuple(options)
  if value not in options:
    raise ValueError(f"unknown `{name}` {value!r}; expected one of {options}.")


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
  """Checks a static hyper-parameter is positive (or non-negative)."""
  if isinstance(value, (int, float)):
    if value < 0 or (value == 0 and not allow_zero):
      bound = ">= 0" if allow_zero else "> 0"
      raise ValueError(f"`{name}` must be {bound}, got {value!r}.")
