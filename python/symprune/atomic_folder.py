"""An output folder that appears whole or not at all: written beside OUT_DIR under a temporary
name, then swapped in with renames. Temporary folders are named after the process
(``.OUT.tmp-PID-*``, ``.OUT.old-PID-*``), so that those of a killed run (SIGKILL, a crash) are
recognised and removed by the next run."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_folder(out_dir: Path) -> Iterator[Path]:
    """Yields an empty folder to write; on success it replaces ``out_dir`` (a previous folder is
    removed only once the new one is in place), on any error or signal it is removed."""
    out = out_dir.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(out)
    pid = os.getpid()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{pid}-", dir=out.parent))
    old: Path | None = None
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{pid}-", dir=out.parent))
            os.rename(out, old / "previous")
        os.rename(tmp, out)
    except BaseException:
        if old is not None and not out.exists():
            os.rename(old / "previous", out)  # put the previous folder back
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _remove_orphans(out: Path) -> None:
    """Remove the temporary folders beside ``out`` of runs whose process is gone."""
    for entry in out.parent.glob(f".{out.name}.*-*-*"):
        kind, _, rest = entry.name[len(out.name) + 2:].partition("-")
        pid = rest.split("-", 1)[0]
        if kind not in ("tmp", "old") or not pid.isdigit() or not entry.is_dir() or _alive(int(pid)):
            continue
        if kind == "old" and not out.exists() and (entry / "previous").is_dir():
            os.rename(entry / "previous", out)  # killed between the two renames: the old folder returns
        shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
