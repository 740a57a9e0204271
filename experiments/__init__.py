"""absl binaries and per-paper toy reproductions built on pgx_lab."""
