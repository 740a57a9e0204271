"""Policies. Params are plain pytrees; models know no learner."""

from pgx_lab.models.tabular import TabularSequencePolicy
