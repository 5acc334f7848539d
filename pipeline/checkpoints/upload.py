"""Ray Train's checkpoint upload, checked: every file a rank hands over must arrive.

Ray Train copies a reported checkpoint directory into storage with `pyarrow.fs.copy_files`.
On S3 that copy can lose a file without raising: when the request that completes a file's
upload fails (a connection reset), pyarrow's output stream records the error only when it is
destroyed, where it is logged as "Error ignored" and dropped. The report then registers a
checkpoint without that rank's file; a resume skips it as incomplete, but a finished run's
final checkpoint would stay broken and nothing would say so.

`upload_checked` is the `checkpoint_upload_fn` every rank passes to `ray.train.report`: it runs
Ray Train's own copy, then lists the destination and compares names and sizes with the local
files. A file missing or short is copied again, up to `TRM_S3_MAX_ATTEMPTS` times with the
same backoff as the project's other S3 requests; after that a `CheckpointError` names the
files, the worker group fails and the run resumes from its previous checkpoint (within
`checkpoint.max_failures`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipeline.checkpoints.store import CheckpointError
from pipeline.data.storage import retry_policy


def upload_checked(checkpoint: Any, dir_name: str, storage: Any = None) -> Any:
    """Persist `checkpoint` (a local `ray.train.Checkpoint`) as `dir_name` in the run's storage
    (`storage`: Ray Train's storage context, the current one by default) and return the
    persisted checkpoint once every local file is there with its size."""
    if storage is None:
        import ray.train

        storage = ray.train.get_context().get_storage()
    attempts, base_s = retry_policy()
    for attempt in range(1, attempts + 1):
        persisted = storage.persist_current_checkpoint(checkpoint, dir_name)
        lost = missing(checkpoint.path, storage.storage_filesystem, persisted.path)
        if not lost:
            return persisted
        if attempt < attempts:
            print(f"checkpoint upload to {persisted.path!r} lost {', '.join(lost)}; "
                  f"copying it again ({attempt + 1}/{attempts})", flush=True)  # fmt: skip
            time.sleep(base_s * 2 ** (attempt - 1))
    raise CheckpointError(
        f"checkpoint upload to {persisted.path!r} lost {', '.join(lost)} in each of "
        f"{attempts} attempts"
    )


def missing(local_dir: str, fs: Any, remote_dir: str) -> list[str]:
    """Files under `local_dir` (relative paths) absent from `remote_dir` on `fs` (a
    `pyarrow.fs` filesystem) or there with another size."""
    import pyarrow.fs as pafs

    root = Path(local_dir)
    want = {p.relative_to(root).as_posix(): p.stat().st_size
            for p in root.rglob("*") if p.is_file()}  # fmt: skip
    found = fs.get_file_info(pafs.FileSelector(remote_dir.rstrip("/"), recursive=True))
    prefix = remote_dir.rstrip("/") + "/"
    have = {f.path.removeprefix(prefix): f.size for f in found if f.type == pafs.FileType.File}
    return sorted(name for name, size in want.items() if have.get(name) != size)
