"""Several hosts: `jax.distributed.initialize`, with CPU collectives over gloo.

Call `initialize` once per process, before any other JAX call. On managed clusters (SLURM, Cloud
TPU, ...) JAX detects the coordinator, the number of processes and this process's id; elsewhere
pass them. After it, `jax.devices()` lists the devices of every process, a `Mesh` over them spans
all hosts, and each process feeds its own shard of a batch with
`jax.make_array_from_process_local_data`.
"""

from typing import Optional

import jax


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *, cpu_collectives: str = "gloo") -> None:
  """Joins this process to a multi-process JAX run.

  Args:
    coordinator_address: "host:port" of process 0's coordinator; None to auto-detect.
    num_processes: the number of processes; None to auto-detect.
    process_id: this process's id in [0, num_processes); None to auto-detect.
    cpu_collectives: the implementation of cross-process collectives on CPU ("gloo" or "mpi");
      without one, CPU computations cannot span processes.

  Raises:
    ValueError: naming the argument, on an inconsistent set of arguments.
  """
  given = [a is not None for a in (coordinator_address, num_processes, process_id)]
  if any(given) and not all(given):
    raise ValueError("`coordinator_address`, `num_processes` and `process_id` are given together "
                     "or not at all (auto-detection).")
  if num_processes is not None and (num_processes < 1 or not 0 <= process_id < num_processes):
    raise ValueError(f"`process_id` must be in [0, num_processes={num_processes}), got "
                     f"{process_id!r}.")
  if cpu_collectives not in ("gloo", "mpi"):
    raise ValueError(f"unknown `cpu_collectives` {cpu_collectives!r}; expected 'gloo' or 'mpi'.")
  jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
