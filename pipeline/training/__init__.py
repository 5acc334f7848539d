"""One training run: `worker` (the per-worker loop), `state` (model, optimizer, EMA and the
step), `cluster` (Ray Train driver), `preflight` (checks before any worker starts),
`failures` (which errors are retried), `metrics`, `device`, `distributed`."""
