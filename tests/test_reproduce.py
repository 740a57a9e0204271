"""`python -m experiments.reproduce`: the paper registry, the claim contract, exit codes, suites.

The mechanism is tested with fake paper modules written to a temporary folder that is appended to
`experiments.papers.__path__` for one test (nothing is added to experiments/papers/). Every real
paper module is run at --size=small (one case per module that exists).
"""

import importlib
import io
import json
import os
import pathlib
import pkgutil
import re
import subprocess
import sys

import numpy as np
import pytest

from experiments import papers
from experiments import reproduce

ROOT = pathlib.Path(__file__).resolve().parents[1]

# A stand-in experiment: the mean of 1..n (n = 10 small, 100 full) against THRESHOLD.
FAKE = '''
import os
from experiments.papers import Claim

def run(size, workdir):
  n = {{"small": 10, "full": 100}}[size]
  mean = sum(range(1, n + 1)) / n
  path = os.path.join(workdir, "numbers.txt")
  with open(path, "w") as f:
    f.write(str(mean))
  return Claim(holds=mean > {threshold}, statement=f"mean {{mean}} > {threshold}",
               table=f"| size | mean |\\n|---|---|\\n| {{size}} | {{mean}} |", artifacts=(path,))
'''


def _free_keys(n):
  free = [k for k in papers.PAPERS if not papers.module_exists(k)]
  if len(free) < n:
    pytest.skip(f"needs {n} registry keys without a module")
  return free[:n]


@pytest.fixture
def fake_papers(tmp_path, monkeypatch):
  """Returns `add(key, source)`, which makes `experiments.papers.<key>` import `source`."""
  folder = tmp_path / "fake_papers"
  folder.mkdir()
  monkeypatch.setattr(papers, "__path__", [*papers.__path__, str(folder)])
  added = []

  def add(key, source):
    (folder / f"{key}.py").write_text(source)
    importlib.invalidate_caches()
    added.append(key)
    return folder

  yield add
  for key in added:
    sys.modules.pop(papers.module_name(key), None)


def _execute(**kwargs):
  out, err = io.StringIO(), io.StringIO()
  status = reproduce.execute(out=out, err=err, **kwargs)
  return status, out.getvalue(), err.getvalue()


def _papers_md():
  for path in (ROOT / "shared" / "PAPERS.md", ROOT.parent / "shared" / "PAPERS.md"):
    if path.exists():
      return path
  pytest.skip("PAPERS.md (the shared folder) is not in this checkout")


def test_registry_is_the_papers_md_table():
  rows = [line for line in _papers_md().read_text().splitlines()
          if line.startswith("| ") and not line.startswith("| key ")]
  table = [tuple(cell.strip() for cell in row.split("|")[1:4]) for row in rows]
  assert len(table) == 34
  assert [(p.key, p.name, p.spec) for p in papers.PAPERS.values()] == table


def test_claim_normalises_and_refuses_bad_fields(tmp_path):
  claim = papers.Claim(np.float32(2.0) > 1.0, "2 > 1", "| a |", [tmp_path / "x.png"])
  assert claim.holds is True and claim.artifacts == (str(tmp_path / "x.png"),)
  with pytest.raises(ValueError, match="holds"):
    papers.Claim("yes", "s", "t")
  with pytest.raises(ValueError, match="holds"):
    papers.Claim(np.array([True, False]), "s", "t")
  with pytest.raises(ValueError, match="statement"):
    papers.Claim(True, "two\nlines", "t")
  with pytest.raises(ValueError, match="statement"):
    papers.Claim(True, "  ", "t")
  with pytest.raises(ValueError, match="artifacts"):
    papers.Claim(True, "s", "t", "plot.png")


@pytest.mark.parametrize("threshold,size,status,verb", [
    (5.0, "small", 0, "holds"), (6.0, "small", 1, "fails"), (6.0, "full", 0, "holds")])
def test_fake_paper_claim_sets_status_and_last_line(fake_papers, tmp_path, threshold, size,
                                                     status, verb):
  key, = _free_keys(1)
  fake_papers(key, FAKE.format(threshold=threshold))
  workdir = tmp_path / "run"        # created by reproduce
  code, out, err = _execute(paper=key, size=size, workdir=str(workdir))
  mean = 5.5 if size == "small" else 50.5
  assert (code, err) == (status, "")
  lines = out.rstrip("\n").split("\n")
  assert lines[-1] == f"claim {verb}: mean {mean} > {threshold}"
  assert f"| {size} | {mean} |" in lines
  assert (workdir / "numbers.txt").read_text() == str(mean)
  saved = json.loads((workdir / "claim.json").read_text())
  assert saved["holds"] is (status == 0) and saved["size"] == size and saved["key"] == key
  assert saved["artifacts"] == [str(workdir / "numbers.txt")]


def test_unknown_key_missing_module_and_bad_size_exit_2(fake_papers, tmp_path):
  missing, present = _free_keys(2)
  fake_papers(present, FAKE.format(threshold=0.0))
  code, out, err = _execute(paper="not_a_paper", workdir=str(tmp_path))
  assert code == 2 and out == "" and "unknown paper key" in err and "harpg" in err
  code, out, err = _execute(paper=missing, workdir=str(tmp_path))
  assert code == 2 and out == "" and f"experiments/papers/{missing}.py does not exist" in err
  code, out, err = _execute(paper=present, size="huge", workdir=str(tmp_path))
  assert code == 2 and "--size" in err
  for kwargs in ({}, {"paper": present, "list_": True}):
    code, _, err = _execute(**kwargs)
    assert code == 2 and "exactly one" in err
  assert not (tmp_path / "claim.json").exists()


@pytest.mark.parametrize("body,match", [
    ("def run(size, workdir):\n  return True\n", "returned bool, expected"),
    ("from experiments.papers import Claim\ndef run(size, workdir):\n"
     "  return Claim(True, 's', 't', ('no_such_file.png',))\n", "do not exist"),
    ("RUN = 1\n", "has no function `run"),
])
def test_a_broken_paper_module_is_an_error_not_a_claim(fake_papers, tmp_path, body, match):
  key, = _free_keys(1)
  fake_papers(key, body)
  with pytest.raises(ValueError, match=match):
    _execute(paper=key, workdir=str(tmp_path))


def test_list_shows_every_key_and_which_modules_exist(fake_papers):
  key, = _free_keys(1)
  fake_papers(key, FAKE.format(threshold=0.0))
  have = set(papers.available())
  assert key in have
  code, out, _ = _execute(list_=True)
  assert code == 0
  rows = {line.split()[0]: line.split() for line in out.splitlines()[1:-1]}
  assert list(rows) == list(papers.PAPERS)
  for k, cells in rows.items():
    assert cells[2] == ("yes" if k in have else "no"), k
    assert " ".join(cells[3:]) == papers.PAPERS[k].name
  assert out.splitlines()[-1] == f"{len(have)} of 34 papers have a module."


def _cli(args, extra_path):
  """Runs the real command line (absl flags, exit status) in a subprocess from the repo root."""
  script = ("import sys\nfrom absl import app\nfrom experiments import papers, reproduce\n"
            "papers.__path__.append(sys.argv.pop(1))\napp.run(reproduce.main, flags_parser=reproduce.parse_flags)\n")
  return subprocess.run([sys.executable, "-c", script, str(extra_path), *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_command_line_exit_statuses(fake_papers, tmp_path):
  holds, fails, missing, broken = _free_keys(4)
  folder = fake_papers(holds, FAKE.format(threshold=5.0))
  fake_papers(fails, FAKE.format(threshold=6.0))
  fake_papers(broken, "def run(size, workdir):\n  raise RuntimeError('diverged')\n")
  r = _cli([f"--paper={broken}", f"--workdir={tmp_path / broken}"], folder)
  assert r.returncode == 3 and "RuntimeError: diverged" in r.stderr and "claim" not in r.stdout
  for key, status, verb in ((holds, 0, "holds"), (fails, 1, "fails")):
    r = _cli([f"--paper={key}", f"--workdir={tmp_path / key}"], folder)
    assert r.returncode == status, r.stderr
    assert r.stdout.splitlines()[-1] == f"claim {verb}: mean 5.5 > {5.0 if status == 0 else 6.0}"
  r = _cli([f"--paper={missing}"], folder)
  assert r.returncode == 2 and "does not exist" in r.stderr
  r = _cli(["--paper=nope"], folder)
  assert r.returncode == 2 and "unknown paper key" in r.stderr
  r = _cli(["--suite=nope"], folder)
  assert r.returncode == 2 and "unknown suite" in r.stderr and "demo" in r.stderr
  r = _cli(["--paper=x", "--bogus_flag=1"], folder)
  assert r.returncode == 2 and "bogus_flag" in r.stderr
  r = _cli(["--list"], folder)
  assert r.returncode == 0 and len(r.stdout.splitlines()) == 36


def test_every_module_under_papers_is_a_registry_key():
  names = [m.name for m in pkgutil.iter_modules(papers.__path__) if not m.name.startswith("_")]
  assert set(names) <= set(papers.PAPERS), "modules named after no PAPERS.md key (private "\
      "helpers start with _): " + str(sorted(set(names) - set(papers.PAPERS)))
  assert sorted(names) == sorted(papers.available())


def _check_paper_runs_at_small_size(key, tmp_path):
  code, out, err = _execute(paper=key, size="small", workdir=str(tmp_path))
  last = out.rstrip("\n").split("\n")[-1]
  assert last.startswith(("claim holds: ", "claim fails: ")), out + err
  assert len(last) > len("claim fails: ")
  assert code == (0 if last.startswith("claim holds: ") else 1)
  assert (tmp_path / "claim.json").exists()


# One test class per paper module: `make test` runs pytest-xdist with --dist=loadscope, which
# schedules each class on its own, so the paper modules (tens of seconds each) spread over the
# workers instead of queueing behind one another in this file.
for _key in papers.available():
  _name = f"TestPaper_{_key}"
  globals()[_name] = type(_name, (), {
      "test_runs_at_small_size":
          lambda self, tmp_path, key=_key: _check_paper_runs_at_small_size(key, tmp_path)})


def _tiny_configs():
  from experiments import estimator_comparison
  from experiments.configs import grpo_tokens, ppo_cartpole
  est = estimator_comparison.default_config()
  est.update(estimators="reinforce,grpo", seeds=2, iterations=10, eval_every=5, num_contexts=4,
             length=3, threshold=2)
  ppo = ppo_cartpole.get_config()
  ppo.update(num_updates=4, chunk_size=2, save_every=4, num_seeds=2, num_envs=2, num_steps=16,
             num_minibatches=2, update_epochs=1, hidden_size=8, eval_envs=2, progress=False,
             tensorboard=False)
  grpo = grpo_tokens.get_config()
  grpo.update(num_updates=2, chunk_size=1, save_every=2, pretrain=False, d_model=16, num_layers=1,
              num_heads=2, prompts_per_batch=2, group_size=2, epochs=1, eval_prompts=4,
              progress=False, tensorboard=False)
  return dict(estimator_config=est, ppo_config=ppo, grpo_config=grpo)


def test_demo_suite_writes_one_report_from_every_part(tmp_path):
  from experiments import suites
  stale = tmp_path / "ppo_cartpole" / "stale.txt"     # a previous demo's run is not resumed
  stale.parent.mkdir()
  stale.write_text("old")
  configs = _tiny_configs()
  path = suites.demo(str(tmp_path), **configs)
  assert path == str(tmp_path / "report.md") and not stale.exists()
  report = (tmp_path / "report.md").read_text()
  for title in ("## Estimator comparison", "## PPO on gymnax CartPole-v1",
                f"## GRPO on the {configs['grpo_config'].task} token task"):
    assert title in report
  links = re.findall(r"\]\(([^)]+)\)", report)
  assert {"estimator_comparison/learning_curves.png", "ppo_cartpole/curve.png",
          "grpo_tokens/curve.png"} <= set(links)
  for link in links:
    assert (tmp_path / link).stat().st_size > (5000 if link.endswith(".png") else 100), link
  # The summary rows are the runs' own logs, read back independently.
  for name, head in (("ppo_cartpole", "eval_return"), ("grpo_tokens", "eval_success")):
    log = [json.loads(l) for l in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in log][-1] == (4 if name == "ppo_cartpole" else 2)
    row = next(l for l in report.splitlines() if l.startswith(f"| {name} |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert float(cells[2]) == pytest.approx(log[0][head], abs=5e-4)
    assert float(cells[3].split(" ± ")[0]) == pytest.approx(log[-1][head], abs=5e-4)
  est = json.loads((tmp_path / "estimator_comparison" / "metrics.json").read_text())
  final = np.mean(np.asarray(est["grpo"]["curve"])[:, -1])
  assert f"| grpo | {np.mean(np.asarray(est['grpo']['curve'])[:, 0]):.3f} | {final:.3f} ±" in report


@pytest.mark.parametrize("arg,field,value,match", [
    ("ppo_config", "num_envs", 0, "config.num_envs"),
    ("grpo_config", "group_size", 1, "config.group_size"),
    ("estimator_config", "seeds", 0, "config.seeds"),
])
def test_demo_suite_refuses_bad_configs_before_running(tmp_path, arg, field, value, match):
  from experiments import suites
  configs = _tiny_configs()
  configs[arg][field] = value
  with pytest.raises(ValueError, match=match):
    suites.demo(str(tmp_path / "demo"), **configs)
  configs = _tiny_configs()
  with pytest.raises(ValueError, match="ppo_config"):
    suites.demo(str(tmp_path / "demo"), **dict(configs, ppo_config=configs["grpo_config"]))
  assert not (tmp_path / "demo").exists()
