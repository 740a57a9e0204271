"""Test set-up: 4 virtual CPU devices (for the sharding tests) and float32 defaults.

`jax_num_cpu_devices` must be set before JAX creates its backends, so it is set here, before any
test module imports jax.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)

from hypothesis import settings  # noqa: E402

# Each new shape compiles: keep examples few, and never time them.
settings.register_profile("pgx", deadline=None, max_examples=25, derandomize=True)
settings.load_profile("pgx")
