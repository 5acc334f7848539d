"""Checkpoints: `store` (write, verify, list), `retention` (which stay), `resume` (what a
continued run may change), `restore` (a model back from a checkpoint)."""
