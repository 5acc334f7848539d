"""Which code a run ran: the git commit (with a digest of uncommitted changes) or, outside a
git checkout, a digest of the source tree; logged as MLflow tags so a run can be traced back."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path


def code_version(repo_dir: str | Path | None = None) -> str:
    """Git commit of the code (with '-dirty' when tracked files changed); where there is no git
    checkout (`ray job submit` uploads the working dir without .git) $TRM_CODE_VERSION when
    set, else 'src-<digest>' of the project's Python sources."""
    repo_dir = Path(repo_dir or Path(__file__).resolve().parent.parent)
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return os.environ.get("TRM_CODE_VERSION") or source_digest(repo_dir)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo_dir,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("TRM_CODE_VERSION") or source_digest(repo_dir)


def source_digest(repo_dir: Path) -> str:
    """'src-' + SHA-256 (12 hex) of the paths and bytes of `trm/` and `pipeline/` *.py."""
    h = hashlib.sha256()
    for path in sorted(p for d in ("trm", "pipeline") for p in (repo_dir / d).rglob("*.py")):
        h.update(str(path.relative_to(repo_dir)).encode() + b"\0" + path.read_bytes())
    return f"src-{h.hexdigest()[:12]}"


def source_tags(version: str) -> dict[str, str]:
    """MLflow's own source tags for a `code_version` (the UI shows the commit)."""
    tags = {"code_version": version}
    commit = version.removesuffix("-dirty")
    if len(commit) == 40 and all(c in "0123456789abcdef" for c in commit):
        tags["mlflow.source.git.commit"] = commit
    return tags
