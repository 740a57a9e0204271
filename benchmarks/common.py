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
