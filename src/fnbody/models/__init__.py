"""Models: one model per file, its config beside it."""
