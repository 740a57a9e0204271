"""Selection: which prompts, samples or tokens to train on (A-LoL's priority sampling, ...)."""

from pgx_lab.selection import priority
