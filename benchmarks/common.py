"""What the benchmarks share: a description of the machine they ran on."""

import platform


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo (or `platform.processor()` where it is absent)."""
  cpu = platform.processor() or "?"
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return cpu


def write_json(path: str, result: dict) -> None:
  """Writes a benchmark's `result` to `path` (creating its folder) and says so."""
  import json  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {path}")


def print_table(table: str, elapsed: float, load_before, load_after) -> None:
  """Prints a benchmark's markdown `table`, its wall time and the load average around it."""
  fmt = lambda load: "/".join(f"{v:.2f}" for v in load)
  print()
  print(table)
  print(f"\nwall time {elapsed:.1f} s; load average (1/5/15 min) before {fmt(load_before)}, "
        f"after {fmt(load_after)}")
