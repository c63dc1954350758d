"""Where a sweep's Ray Tune experiment lives (`sweep.storage_path`), and what a sweep may be called.

`sweep.storage_path` is a local folder (default ./ray_results, made absolute) or a URI such as
s3://bucket/sweeps or gs://bucket/sweeps. A URI goes to Ray as it is: Ray Tune opens it with
pyarrow's filesystems, syncs every trial's checkpoints there and `--resume` reads them back, so on
a cluster it must be somewhere every node reaches (an object store, or a folder mounted on all
nodes). The filesystem is opened once before the sweep starts, so a scheme that is not installed
or a bucket that cannot be reached fails in seconds, naming the key, not after Ray has started.

A sweep name is one path segment (the Tune experiment folder under storage_path) and a value in
MLflow search filters, so it is restricted to letters, digits, '.', '_' and '-'.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import SweepError

DEFAULT_STORAGE = "ray_results"
SWEEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_sweep_name(name: str) -> str:
    if not SWEEP_NAME.fullmatch(name):
        raise SweepError(f"sweep name {name!r}: use letters, digits, '.', '_' and '-', starting with a letter or "
                         "digit (at most 128 characters): it names a folder under sweep.storage_path")
    return name


def is_uri(path: str) -> bool:
    return "://" in path


@dataclass(frozen=True)
class SweepStorage:
    """sweep.storage_path as Ray Tune takes it: an absolute local path, or a URI untouched."""

    root: str

    @classmethod
    def of(cls, storage_path: str | None) -> SweepStorage:
        root = storage_path or DEFAULT_STORAGE
        storage = cls(root if is_uri(root) else str(Path(root).expanduser().resolve()))
        storage._filesystem()  # fail now on a URI nothing can open
        return storage

    def _filesystem(self):
        import pyarrow.fs

        try:
            return pyarrow.fs.FileSystem.from_uri(self.root)
        except (pyarrow.ArrowInvalid, OSError) as error:
            raise SweepError(f"sweep.storage_path={self.root}: Ray Tune cannot open it ({error}); "
                             "give a local folder or a URI of a filesystem pyarrow supports (s3://, gs://, "
                             "abfs://, file://)") from None

    def experiment(self, name: str) -> str:
        """The sweep's Tune experiment folder: what `tune.Tuner.restore` takes."""
        return f"{self.root.rstrip('/')}/{name}"

    def experiment_folder(self, name: str) -> tuple:
        """(pyarrow filesystem, path in it) of the sweep's Tune experiment folder."""
        filesystem, path = self._filesystem()
        return filesystem, f"{path.rstrip('/')}/{name}"

    def exists(self, name: str) -> bool:
        import pyarrow.fs

        filesystem, path = self.experiment_folder(name)
        return filesystem.get_file_info(path).type != pyarrow.fs.FileType.NotFound

    def local_folder(self, name: str) -> Path:
        """A local folder beside the experiment for what the driver downloads (an incremental sweep's
        starting adapter); ./ray_results when the experiment itself is remote."""
        root = Path(DEFAULT_STORAGE).resolve() if is_uri(self.root) else Path(self.root)
        return root / name
