r"""Reproduce one seed paper's claim at toy scale, list the papers, or run a suite of experiments.

  python -m experiments.reproduce --paper=harpg [--size=small|full] [--workdir=results/harpg]
  python -m experiments.reproduce --list
  python -m experiments.reproduce --suite=demo [--workdir=results/demo]

`--paper=<key>` imports `experiments/papers/<key>.py`, calls its `run(size, workdir)`, prints the
measured table and the files it wrote, saves `<workdir>/claim.json`, and ends with the line
`claim holds: <statement>` (exit status 0) or `claim fails: <statement>` (exit status 1), the
contract of PAPERS.md. A key that is not in the registry, a key whose module does not exist yet,
and any other usage error exit with status 2 and say why; an exception inside a paper module (or a
`run` that does not return a valid Claim) prints its traceback and exits with status 3. Neither is
a claim failure.
`--list` prints every key with its paper and whether its module exists. `--suite=<name>` runs one
of `experiments.suites.SUITES` and writes one report, `<workdir>/report.md`, with its plots.
"""

import json
import os
import sys
import time
import traceback
from typing import Optional, TextIO

from absl import app
from absl import flags
from absl import logging

from experiments import papers

EXIT_HOLDS, EXIT_FAILS, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3


def list_papers(out: TextIO = sys.stdout) -> int:
  """Prints every registry key, its spec family, whether its module exists and its paper name."""
  have = set(papers.available())
  width = max(len(k) for k in papers.PAPERS)
  out.write(f"{'key':<{width}}  {'spec':<9}  module  paper\n")
  for key, paper in papers.PAPERS.items():
    out.write(f"{key:<{width}}  {paper.spec:<9}  {'yes' if key in have else 'no':<6}  "
              f"{paper.name}\n")
  out.write(f"{len(have)} of {len(papers.PAPERS)} papers have a module.\n")
  return EXIT_HOLDS


def claim_line(claim: papers.Claim) -> str:
  """The last line of a reproduction: `claim holds: ...` or `claim fails: ...` (`claim`: a Claim)."""
  return f"claim {'holds' if claim.holds else 'fails'}: {claim.statement}"


def reproduce_paper(key: str, size: str, workdir: Optional[str], out: TextIO = sys.stdout,
                    err: TextIO = sys.stderr) -> int:
  """Runs paper `key` at `size` into `workdir` (default `results/<key>`); returns the exit status.

  Args:
    key: a registry key (`experiments.papers.PAPERS`).
    size: "small" or "full".
    workdir: where the paper writes its files and `claim.json`; None for `results/<key>`.
    out, err: streams for the report and for usage errors.

  Returns:
    0 when the claim holds, 1 when it fails, 2 for an unknown key, a missing module or a bad size.
  """
  if key not in papers.PAPERS:
    err.write(f"unknown paper key {key!r}. Known keys: {', '.join(papers.PAPERS)}\n")
    return EXIT_USAGE
  if size not in papers.SIZES:
    err.write(f"--size must be one of {', '.join(papers.SIZES)}, got {size!r}\n")
    return EXIT_USAGE
  if not papers.module_exists(key):
    err.write(f"paper {key!r} ({papers.PAPERS[key].name}) has no module yet: "
              f"experiments/papers/{key}.py does not exist. Papers with a module: "
              f"{', '.join(papers.available()) or 'none'}\n")
    return EXIT_USAGE
  workdir = workdir or os.path.join("results", key)
  t0 = time.perf_counter()
  claim = papers.run(key, size, workdir)
  seconds = time.perf_counter() - t0
  with open(os.path.join(workdir, "claim.json"), "w") as f:
    json.dump({"key": key, "paper": papers.PAPERS[key].name, "size": size,
               "holds": claim.holds, "statement": claim.statement, "table": claim.table,
               "artifacts": list(claim.artifacts), "seconds": seconds}, f, indent=1)
  out.write(f"# {key}: {papers.PAPERS[key].name} (size {size}, {seconds:.1f} s)\n\n")
  out.write(claim.table.rstrip("\n") + "\n\n")
  for path in claim.artifacts:
    out.write(f"wrote {path}\n")
  out.write(claim_line(claim) + "\n")
  out.flush()
  return EXIT_HOLDS if claim.holds else EXIT_FAILS


def run_suite(name: str, workdir: Optional[str], out: TextIO = sys.stdout,
              err: TextIO = sys.stderr) -> int:
  """Runs suite `name` of `experiments.suites.SUITES` into `workdir` (default `results/<name>`).

  Returns 0 once the report is written, 2 for an unknown suite name.
  """
  from experiments import suites   # only the suites pull in the training code
  if name not in suites.SUITES:
    err.write(f"unknown suite {name!r}. Known suites: {', '.join(suites.SUITES)}\n")
    return EXIT_USAGE
  workdir = workdir or os.path.join("results", name)
  t0 = time.perf_counter()
  report = suites.SUITES[name](workdir)
  out.write(f"report: {report}  ({time.perf_counter() - t0:.1f} s)\n")
  out.flush()
  return EXIT_HOLDS


def execute(paper: Optional[str] = None, size: str = "small", workdir: Optional[str] = None,
            list_: bool = False, suite: Optional[str] = None, out: TextIO = sys.stdout,
            err: TextIO = sys.stderr) -> int:
  """Does what the command line asks (exactly one of `paper`, `list_`, `suite`); returns the status."""
  chosen = [n for n, v in (("--paper", paper), ("--list", list_), ("--suite", suite)) if v]
  if len(chosen) != 1:
    err.write("give exactly one of --paper=<key>, --list, --suite=<name>"
              + (f" (got {' and '.join(chosen)})" if chosen else "") + "\n")
    return EXIT_USAGE
  if list_:
    return list_papers(out)
  if suite:
    return run_suite(suite, workdir, out, err)
  return reproduce_paper(paper, size, workdir, out, err)


# The flags live in their own FlagValues: the experiments a suite imports define global flags of
# the same names (--workdir, --config) when imported.
FLAGS = flags.FlagValues()
flags.DEFINE_string("paper", None, "Paper key (see --list).", flag_values=FLAGS)
flags.DEFINE_string("size", "small", "small (tests, ~20 s) or full (the reproduction).",
                    flag_values=FLAGS)
flags.DEFINE_string("workdir", None, "Output folder; default results/<key or suite>.",
                    flag_values=FLAGS)
flags.DEFINE_bool("list", False, "List every paper key and whether its module exists.",
                  flag_values=FLAGS)
flags.DEFINE_string("suite", None, "Run a suite of experiments, e.g. demo.", flag_values=FLAGS)


def parse_flags(argv):
  """absl's own flags (logging, --help) go to the global FLAGS, ours to `FLAGS`; a bad flag exits 2."""
  if any(a in ("-h", "-?", "--help", "--helpshort") for a in argv[1:]):
    sys.stdout.write(f"{__doc__}\nflags:\n{FLAGS.main_module_help() or FLAGS}\n")
    sys.exit(EXIT_HOLDS)
  rest = flags.FLAGS(argv, known_only=True)
  try:
    return FLAGS(rest)
  except flags.Error as e:
    sys.stderr.write(f"{e}\n{FLAGS}\n")
    sys.exit(EXIT_USAGE)


def main(argv):
  """absl entry point: `argv` is what the flags left (the program name only); returns the status."""
  if len(argv) > 1:
    sys.stderr.write(f"unexpected arguments: {argv[1:]}\n")
    return EXIT_USAGE
  if not flags.FLAGS["verbosity"].present:   # orbax logs every checkpoint save at INFO
    logging.set_verbosity(logging.WARNING)
  try:
    return execute(FLAGS.paper, FLAGS.size, FLAGS.workdir, FLAGS.list, FLAGS.suite)
  except Exception:  # pylint: disable=broad-except
    # A crash is not a claim failure: its own status, so that scripts can tell the two apart.
    sys.stdout.flush()
    traceback.print_exc()
    return EXIT_ERROR


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
