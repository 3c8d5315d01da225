"""Where a number came from: git revision, package versions, device, time and host."""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from egmf_core.paths import REPO_ROOT

PACKAGES = ("torch", "transformers", "peft", "accelerate", "numpy", "pandas", "scikit-learn", "scipy")


def git_revision(repo: Path = REPO_ROOT) -> str:
    """HEAD's sha, with "-dirty" when tracked files changed; "unknown" outside git (or no commit).

    Changes under results/ and reports/ do not count: they are what a grid writes, not what it runs.
    A copy of the tree without ``.git`` (a GPU machine given the working tree) reads
    ``$EGMF_GIT_REVISION``, set by whoever copied it.
    """
    if not (repo / ".git").exists() and os.environ.get("EGMF_GIT_REVISION"):
        return os.environ["EGMF_GIT_REVISION"]
    try:
        rev = _git(repo, "rev-parse", "HEAD").strip()
        dirty = _git(repo, "status", "--porcelain", "--untracked-files=no", "--", ".",
                     ":(exclude)results", ":(exclude)reports").strip()
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return "unknown"
    return f"{rev}-dirty" if dirty else rev


@functools.cache
def process_git_revision() -> str:
    """``git_revision()`` of the repo as this process first asked: the code it imported. The CLI
    asks at start, so a commit made while a long grid runs is not credited with its runs."""
    return git_revision()


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True, timeout=10).stdout


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on (read from metadata: no imports)."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def device_string() -> str:
    """"cuda:<name> x<count>" or "cpu"; torch is only consulted when already imported."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return "cpu"


def utc_timestamp() -> str:
    """Now, ISO 8601 in UTC with microseconds (orders two writes of the same run)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def host_name() -> str:
    return socket.gethostname()


def collect(*, git_rev: str | None = None, versions: dict[str, str] | None = None, model_source: str = "",
            trust_remote_code: bool = False, device: str | None = None, **extra) -> dict:
    """The provenance block of a run file (git and versions may be computed once per grid)."""
    return {
        "git_rev": git_rev if git_rev is not None else git_revision(),
        "versions": versions if versions is not None else package_versions(),
        "timestamp": utc_timestamp(),
        "model_source": model_source,
        "trust_remote_code": bool(trust_remote_code),
        "device": device if device is not None else device_string(),
        "host": host_name(),
        **extra,
    }
