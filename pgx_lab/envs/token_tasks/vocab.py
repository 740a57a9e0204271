"""The shared token vocabulary of the token tasks (one model can learn every task).

Token ids (VOCAB_SIZE = 37):

    id      token            use
    0       PAD              padding (left of prompts, right of targets); never part of an answer
    1       BOS              first token of every prompt
    2       EOS              ends a response (generation stops there)
    3       SEP              ends the prompt of copy / reverse / sort / keywords
    4       PLUS             "+" in addition prompts
    5       EQUALS           "=" ends addition prompts
    6..15   DIGIT_0..9       digit d has id DIGIT_0 + d
    16..31  LETTER_A..P      16 letters; letter i (a = 0) has id LETTER_A + i (keywords)
    32      TASK_COPY        task markers: the second prompt token says which task it is
    33      TASK_REVERSE
    34      TASK_SORT
    35      TASK_ADD
    36      TASK_KEYWORDS

`decode` turns ids back into a readable string, e.g. "<bos><add>12+7=" (for debugging and tests).
"""

from typing import Sequence

import numpy as np

PAD, BOS, EOS, SEP, PLUS, EQUALS = 0, 1, 2, 3, 4, 5
DIGIT_0 = 6
NUM_DIGITS = 10
LETTER_A = DIGIT_0 + NUM_DIGITS  # 16
NUM_LETTERS = 16
TASK_COPY = LETTER_A + NUM_LETTERS  # 32
TASK_REVERSE = TASK_COPY + 1
TASK_SORT = TASK_COPY + 2
TASK_ADD = TASK_COPY + 3
TASK_KEYWORDS = TASK_COPY + 4
VOCAB_SIZE = TASK_KEYWORDS + 1  # 37

TASK_MARKERS = {"copy": TASK_COPY, "reverse": TASK_REVERSE, "sort": TASK_SORT,
                "addition": TASK_ADD, "keywords": TASK_KEYWORDS}

_NAMES = {PAD: "<pad>", BOS: "<bos>", EOS: "<eos>", SEP: "<sep>", PLUS: "+", EQUALS: "=",
          TASK_COPY: "<copy>", TASK_REVERSE: "<reverse>", TASK_SORT: "<sort>",
          TASK_ADD: "<add>", TASK_KEYWORDS: "<keywords>"}
_NAMES.update({DIGIT_0 + d: str(d) for d in range(NUM_DIGITS)})
_NAMES.update({LETTER_A + i: chr(ord("a") + i) for i in range(NUM_LETTERS)})


def decode(ids: Sequence[int], skip_pad: bool = True) -> str:
  """A readable string of a 1-D sequence of token ids (PAD dropped unless `skip_pad=False`).

  Args:
    ids: token ids, any 1-D int sequence or array.
    skip_pad: drop PAD tokens.
  """
  out = []
  for i in np.asarray(ids).reshape(-1).tolist():
    if skip_pad and i == PAD:
      continue
    out.append(_NAMES.get(int(i), f"<{int(i)}?>"))
  return "".join(out)
