"""Checkpoints: `store` (a checkpoint's files: written atomically, verified), `directory` (the
checkpoint store: save, list, prune, rank, resume), `resume` (what a continued run may change),
`restore` (a model back from a checkpoint)."""
