"""``log.csv``: one row per logged step, truncated on resumption to what the checkpoint saw."""

from __future__ import annotations

import csv
from pathlib import Path
from types import TracebackType
from typing import Any

from kaem.io import atomic_path

__all__ = ["CSVLog"]


class CSVLog:
    """Append-only CSV of training diagnostics; a context manager that closes the file.

    Opening it keeps only the rows up to ``keep_upto`` (the step of the checkpoint a run
    resumes from): later rows are recomputed, so a resumed log equals an uninterrupted one.
    The columns are those of the first row written; lines end in ``\\n`` on every platform
    (the csv module's default is ``\\r\\n``).
    """

    def __init__(self, path: Path, keep_upto: int) -> None:
        self.path = path
        rows = _read(path, keep_upto)
        fields = list(rows[0]) if rows else None
        with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
            if fields:
                writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
                writer.writeheader()
                writer.writerows(rows)
        self._file = path.open("a", newline="")
        self._writer = self._dict_writer(fields) if fields else None

    def _dict_writer(self, fields: list[str]) -> csv.DictWriter:
        return csv.DictWriter(self._file, fieldnames=fields, lineterminator="\n")

    def write(self, row: dict[str, Any]) -> None:
        """Append ``row`` and flush it to disk; an :class:`OSError` (a full disk) names the log."""
        try:
            if self._writer is None:
                self._writer = self._dict_writer(list(row))
                self._writer.writeheader()
            self._writer.writerow(row)
            self._file.flush()
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(self.path)) from exc

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> CSVLog:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _read(path: Path, upto: int) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["step"]) <= upto]
