"""Two processes on localhost: `pgx_lab.train.distributed.initialize` joins them into one run."""

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from pgx_lab import distributed

_WORKER = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from pgx_lab import distributed
    pid, port = int(sys.argv[1]), sys.argv[2]
    distributed.initialize(f"127.0.0.1:{port}", 2, pid)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("batch",))
    local = np.full((1, 3), float(pid + 1), np.float32)        # process i holds i + 1
    x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("batch")), local)
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(x)
    print("RESULT", jax.process_count(), len(jax.devices()), float(total), flush=True)
    jax.distributed.shutdown()
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_share_one_mesh(tmp_path):
  script = tmp_path / "worker.py"
  script.write_text(_WORKER)
  port = str(_free_port())
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, str(script), str(i), port], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=120)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-2000:]
    line = [l for l in out.splitlines() if l.startswith("RESULT")][-1]
    # Two processes, one CPU device each, and the sum spans both: 3 * 1 + 3 * 2 = 9.
    assert line.split()[1:] == ["2", "2", "9.0"], line


def test_partial_arguments_are_refused():
  with pytest.raises(ValueError, match="coordinator_address"):
    distributed.initialize("127.0.0.1:1234", None, None)
  with pytest.raises(ValueError, match="process_id"):
    distributed.initialize("127.0.0.1:1234", 2, 5)
  with pytest.raises(ValueError, match="cpu_collectives"):
    distributed.initialize(cpu_collectives="nccl")
