"""MLflow tracking: `tracker` (runs, metrics, models; only world rank 0 calls it), `server`
(where the store is, whether it answers, run links), `provenance` (the code version)."""
