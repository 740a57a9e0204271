"""Token tasks: demonstrations score 1, corruptions score 0 or the right partial credit, lengths,
classes and left padding as documented, addition against Python integers, keywords by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgx_lab.envs.token_tasks import Prompts
from pgx_lab.envs.token_tasks import make_task
from pgx_lab.envs.token_tasks import repeat_for_groups
from pgx_lab.envs.token_tasks import vocab

KEY = jax.random.PRNGKey(0)
N = 64   # one batch size (and, below, mostly one task configuration) so compilations are shared
SIMPLE = ("copy", "reverse", "sort", "addition", "keywords")
LAST_PROMPT_TOKEN = {"copy": vocab.SEP, "reverse": vocab.SEP, "sort": vocab.SEP,
                     "addition": vocab.EQUALS, "keywords": vocab.SEP}


def _task(name, **kw):
  if name == "mixture":
    return make_task("mixture", tasks=("copy", "addition", "keywords"), **kw)
  return make_task(name, max_difficulty=5, **kw)


def _mask_of(resp):
  return (resp != vocab.PAD).astype(jnp.int32)


def _digits(ids):
  return "".join(str(int(i) - vocab.DIGIT_0) for i in ids)


@pytest.mark.parametrize("name", SIMPLE + ("mixture",))
def test_demonstration_scores_one(name):
  task = _task(name)
  prompts = task.sample_prompts(KEY, N)
  demo = task.demonstration(prompts)
  assert demo.shape == (N, task.response_len) and demo.dtype == jnp.int32
  # As the sampler returns it: EOS repeated after the end, masked out, and a longer budget.
  filled = jnp.where(demo == vocab.PAD, vocab.EOS, demo)
  longer = jnp.concatenate([filled, jnp.full((N, 3), vocab.EOS, jnp.int32)], axis=1)
  eos_pos = jnp.argmax(longer == vocab.EOS, axis=1)
  mask = (jnp.arange(longer.shape[1])[None] <= eos_pos[:, None]).astype(jnp.float32)
  partial = make_task("mixture", tasks=[make_task(t.name, reward_type="partial")
                                        for t in task.tasks]) if name == "mixture" else (
                                            _task(name, reward_type="partial"))
  for t in (task, partial):
    np.testing.assert_array_equal(t.reward(prompts, demo, _mask_of(demo)), np.ones(N))
    np.testing.assert_array_equal(t.reward(prompts, longer, mask), np.ones(N))


@pytest.mark.parametrize("name", ("copy", "reverse", "sort", "addition"))
def test_corrupted_demonstrations(name):
  exact, partial = _task(name), _task(name, reward_type="partial")
  prompts = exact.sample_prompts(jax.random.PRNGKey(1), N)
  demo = np.asarray(exact.demonstration(prompts))
  lens = np.asarray(prompts.target_len)
  rng = np.random.default_rng(0)
  # One wrong digit: exact 0, partial (len - 1) / len.
  wrong = demo.copy()
  for i, n in enumerate(lens):
    t = rng.integers(n)
    wrong[i, t] = (wrong[i, t] - vocab.DIGIT_0 + 1) % 10 + vocab.DIGIT_0
  # One extra digit before EOS: partial len / (len + 1).
  extra = np.concatenate([demo, np.zeros((N, 1), np.int32)], axis=1)
  extra[np.arange(N), lens] = vocab.DIGIT_0 + 3
  extra[np.arange(N), lens + 1] = vocab.EOS
  # EOS one token early: partial (len - 1) / len; with len 1 the answer is empty: 0.
  short = demo.copy()
  short[np.arange(N), lens - 1] = vocab.EOS
  # No EOS, answer cut by the mask after len tokens: exact 1 (the mask ends the answer).
  cut = demo.copy()
  cut[np.arange(N), lens] = vocab.DIGIT_0
  cut_mask = (np.arange(cut.shape[1])[None] < lens[:, None]).astype(np.int32)
  cases = [(wrong, _mask_of(wrong), (lens - 1) / lens), (extra, _mask_of(extra), lens / (lens + 1)),
           (short, _mask_of(short), (lens - 1) / lens), (cut, cut_mask, np.ones(N))]
  for resp, mask, want in cases:
    resp = jnp.asarray(resp)
    np.testing.assert_allclose(partial.reward(prompts, resp, mask), want, rtol=1e-6)
    np.testing.assert_array_equal(exact.reward(prompts, resp, mask), (want == 1).astype(float))


def test_transductions_against_numpy():
  for name, fn in (("copy", lambda s: s), ("reverse", lambda s: s[::-1]),
                   ("sort", lambda s: "".join(sorted(s)))):
    task = make_task(name, max_difficulty=5, num_symbols=4)
    p = task.sample_prompts(jax.random.PRNGKey(2), N)
    for row, tgt in zip(np.asarray(p.tokens), np.asarray(p.target)):
      text = vocab.decode(row)
      marker = f"<{name}>"
      assert text.startswith("<bos>" + marker) and text.endswith("<sep>")
      s = text[len("<bos>" + marker):-len("<sep>")]
      assert set(s) <= set("0123"), s   # num_symbols = 4
      assert vocab.decode(tgt) == fn(s)


@pytest.mark.parametrize("reverse_answer", [True, False])
def test_addition_against_python_integers(reverse_answer):
  task = _task("addition", reverse_answer=reverse_answer)
  batches = [task.sample_prompts(k, N) for k in jax.random.split(jax.random.PRNGKey(3), 5)]
  p = jax.tree.map(lambda *x: np.concatenate(x), *batches)    # 320 random sums
  seen_carry_out = False
  for row, tgt, n_tgt, d in zip(p.tokens, p.target, p.target_len, p.difficulty):
    text = vocab.decode(row)
    assert text.startswith("<bos><add>") and text.endswith("=")
    a, b = text[len("<bos><add>"):-1].split("+")
    assert len(a) == len(b) == d
    if d > 1:
      assert a[0] != "0" and b[0] != "0"
    answer = _digits(tgt[:n_tgt])
    assert (tgt[n_tgt:] == vocab.PAD).all()
    if reverse_answer:
      answer = answer[::-1]
    assert answer == str(int(a) + int(b)), (a, b, answer)
    seen_carry_out |= len(answer) == d + 1
  assert seen_carry_out


def test_keyword_coverage_by_hand():
  L = vocab.LETTER_A
  a, b, c, d = L, L + 1, L + 2, L + 3
  prompts = Prompts(tokens=jnp.zeros((1, 6), jnp.int32), mask=jnp.ones((1, 6), jnp.int32),
                    target=jnp.array([[a, b, c, 0]], jnp.int32), target_len=jnp.array([3]),
                    class_id=jnp.array([2]), difficulty=jnp.array([3]))
  E = vocab.EOS
  cases = {  # response -> (partial, with max_extra_tokens=1, max_extra_tokens=None)
      (a, b, c, E, 0, 0): (1.0, 1.0, 1.0),
      (c, a, b, E, 0, 0): (1.0, 1.0, 1.0),
      (a, b, E, 0, 0, 0): (2 / 3, 2 / 3, 2 / 3),
      (a, b, d, E, 0, 0): (2 / 3, 2 / 3, 2 / 3),
      (a, a, b, E, 0, 0): (2 / 3, 2 / 3, 2 / 3),
      (a, b, c, d, E, 0): (0.0, 1.0, 1.0),          # 4 tokens > 3 keywords
      (a, b, d, d, c, E): (0.0, 0.0, 1.0),          # 5 tokens
      (a, E, b, c, 0, 0): (1 / 3, 1 / 3, 1 / 3),    # after EOS does not count
      (E, a, b, c, 0, 0): (0.0, 0.0, 0.0),
  }
  for resp, want in cases.items():
    r = jnp.array([resp], jnp.int32)
    m = _mask_of(r)
    for extra, w in zip((0, 1, None), want):
      part = make_task("keywords", reward_type="partial", max_extra_tokens=extra)
      ex = make_task("keywords", max_extra_tokens=extra)
      np.testing.assert_allclose(part.reward(prompts, r, m), [w], rtol=1e-6, err_msg=str(resp))
      np.testing.assert_array_equal(ex.reward(prompts, r, m), [float(w == 1.0)])
  # The mask ends the answer too: c is generated but masked.
  r = jnp.array([[a, b, c, E, 0, 0]], jnp.int32)
  m = jnp.array([[1, 1, 0, 0, 0, 0]])
  np.testing.assert_allclose(make_task("keywords", reward_type="partial").reward(prompts, r, m),
                             [2 / 3], rtol=1e-6)


def test_keywords_distinct_letters():
  task = make_task("keywords", min_difficulty=16, max_difficulty=16)
  p = task.sample_prompts(jax.random.PRNGKey(4), N)
  for tgt in np.asarray(p.target):
    assert sorted(tgt.tolist()) == list(range(vocab.LETTER_A, vocab.LETTER_A + 16))


@pytest.mark.parametrize("name", SIMPLE)
def test_difficulty_sets_lengths_and_classes(name):
  task = _task(name)
  assert task.num_classes == 5
  for d in range(1, 6):
    p = task.sample_prompts(jax.random.PRNGKey(d), N, difficulty=d)
    want_prompt = 2 * d + 4 if name == "addition" else d + 3
    np.testing.assert_array_equal(p.mask.sum(1), want_prompt)
    np.testing.assert_array_equal(p.class_id, d - 1)
    np.testing.assert_array_equal(p.difficulty, d)
    tl = np.asarray(p.target_len)
    if name == "addition":
      assert set(tl.tolist()) <= {d, d + 1}
    else:
      np.testing.assert_array_equal(tl, d)
  bigger = make_task(name, min_difficulty=2, max_difficulty=7)
  assert bigger.prompt_len > task.prompt_len and bigger.answer_len > task.answer_len
  assert bigger.num_classes == 6
  # Mixed difficulty: every level appears; per-prompt levels in an array.
  p = task.sample_prompts(KEY, N)
  assert set(np.asarray(p.class_id).tolist()) == {0, 1, 2, 3, 4}
  levels = jnp.asarray(np.random.default_rng(0).integers(1, 6, N), jnp.int32)
  p = task.sample_prompts(KEY, N, difficulty=levels)
  np.testing.assert_array_equal(p.difficulty, levels)
  np.testing.assert_array_equal(p.class_id, levels - 1)


@pytest.mark.parametrize("name", SIMPLE + ("mixture",))
def test_left_padding(name):
  task = _task(name)
  p = task.sample_prompts(jax.random.PRNGKey(5), N)
  tokens, mask = np.asarray(p.tokens), np.asarray(p.mask)
  assert tokens.shape == (N, task.prompt_len) and tokens.dtype == np.int32
  assert np.all(np.diff(mask, axis=1) >= 0)             # 0 ... 0 1 ... 1
  assert np.all(mask[:, -1] == 1)
  assert np.all((tokens == vocab.PAD) == (mask == 0))    # padding is PAD, prompts hold no PAD
  first = task.prompt_len - mask.sum(1)
  assert np.all(tokens[np.arange(N), first] == vocab.BOS)
  marker = tokens[np.arange(N), first + 1]
  names = [name] * N if name != "mixture" else [
      task.tasks[i].name for i in np.asarray(task.task_index(p))]
  np.testing.assert_array_equal(marker, [vocab.TASK_MARKERS[n] for n in names])
  np.testing.assert_array_equal(tokens[:, -1], [LAST_PROMPT_TOKEN[n] for n in names])


def test_mixture_classes():
  task = _task("mixture")
  # Sub-tasks built by name keep their defaults: copy 1-4, addition 1-3, keywords 1-4.
  assert task.class_offsets == (0, 4, 7) and task.num_classes == 11
  p = task.sample_prompts(jax.random.PRNGKey(6), N)
  which = np.asarray(task.task_index(p))
  assert set(which.tolist()) == {0, 1, 2}
  for t, sub in enumerate(task.tasks):
    cls = np.asarray(p.class_id)[which == t] - task.class_offsets[t]
    np.testing.assert_array_equal(cls, np.asarray(p.difficulty)[which == t] - sub.min_difficulty)


def test_jit_and_vmap():
  task = _task("addition", reward_type="partial")
  sample = jax.jit(task.sample_prompts, static_argnums=1)
  p = sample(KEY, N, jnp.full((N,), 2, jnp.int32))   # traced per-prompt difficulty
  np.testing.assert_array_equal(p.difficulty, 2)
  resp = jax.random.randint(KEY, (N, task.response_len), vocab.DIGIT_0, vocab.DIGIT_0 + 10)
  resp = resp.at[:8].set(task.demonstration(p)[:8])
  mask = jnp.ones_like(resp)
  eager = task.reward(p, resp, mask)
  np.testing.assert_allclose(jax.jit(task.reward)(p, resp, mask), eager)
  assert np.all(np.asarray(eager[:8]) == 1) and np.all(np.asarray(eager[8:]) < 1)
  keys = jax.random.split(KEY, 3)
  batched = jax.vmap(lambda k: task.sample_prompts(k, N))(keys)
  demos = jax.vmap(task.demonstration)(batched)
  r = jax.vmap(task.reward)(batched, demos, _mask_of(demos))
  np.testing.assert_array_equal(r, np.ones((3, N)))
  one = task.sample_prompts(keys[1], N)
  np.testing.assert_array_equal(batched.tokens[1], one.tokens)
  # A traced difficulty out of range is clipped, not an error.
  p = sample(KEY, N, jnp.arange(N, dtype=jnp.int32) - 2)
  np.testing.assert_array_equal(p.difficulty, np.clip(np.arange(N) - 2, 1, 5))


def test_repeat_for_groups():
  task = make_task("sort")
  p = task.sample_prompts(KEY, 5)
  rep, gid = repeat_for_groups(p, 3)
  np.testing.assert_array_equal(gid, np.repeat(np.arange(5), 3))
  np.testing.assert_array_equal(rep.tokens, np.repeat(np.asarray(p.tokens), 3, axis=0))
  np.testing.assert_array_equal(rep.target_len, np.repeat(np.asarray(p.target_len), 3))
  with pytest.raises(ValueError, match="group_size"):
    repeat_for_groups(p, 0)


def test_bad_input_names_argument():
  with pytest.raises(ValueError, match=r"'nope'.*addition.*copy.*keywords"):
    make_task("nope")
  with pytest.raises(ValueError, match="max_difficulty"):
    make_task("copy", min_difficulty=4, max_difficulty=2)
  with pytest.raises(ValueError, match="min_difficulty"):
    make_task("copy", min_difficulty=0)
  with pytest.raises(ValueError, match="max_difficulty"):
    make_task("keywords", max_difficulty=17)
  with pytest.raises(ValueError, match="reward_type"):
    make_task("reverse", reward_type="fuzzy")
  with pytest.raises(ValueError, match="num_symbols"):
    make_task("copy", num_symbols=11)
  with pytest.raises(ValueError, match="max_extra_tokens"):
    make_task("keywords", max_extra_tokens=-1)
  with pytest.raises(ValueError, match="colour"):
    make_task("copy", colour=3)
  with pytest.raises(ValueError, match="tasks"):
    make_task("mixture", tasks=("copy", "copy"))
  task = make_task("copy", max_difficulty=4)
  for bad in (0, 5, jnp.array([1, 2, 7]), jnp.array([1, 2]), jnp.array([1.0, 2.0, 3.0])):
    with pytest.raises(ValueError, match="difficulty"):
      task.sample_prompts(KEY, 3, difficulty=bad)
  with pytest.raises(ValueError, match="`n`"):
    task.sample_prompts(KEY, 0)
  p = task.sample_prompts(KEY, 3)
  with pytest.raises(ValueError, match="response"):
    task.reward(p, jnp.zeros((4, 5), jnp.int32), jnp.ones((4, 5)))
  with pytest.raises(ValueError, match="response"):
    task.reward(p, jnp.zeros((3, 5)), jnp.ones((3, 5)))
  with pytest.raises(ValueError, match="response_mask"):
    task.reward(p, jnp.zeros((3, 5), jnp.int32), jnp.ones((3, 4)))
  with pytest.raises(ValueError, match="prompts"):
    task.reward(p.tokens, jnp.zeros((3, 5), jnp.int32), jnp.ones((3, 5)))
