"""Speed measurements of pgx_lab against hand-written and rlax peers (`python -m benchmarks.<name>`)."""
