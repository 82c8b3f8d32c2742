"""One model-agnostic training loop, its checkpoints and distributed set-up."""
