"""The files of a landing folder and the day each belongs to, from their names alone (no file is read here).

Light on purpose: the Dagster definitions list landing days when they load (``partitions.end: data``).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

DAY_IN_NAME = re.compile(r"(\d{4}-\d{2}-\d{2})")


class IngestionError(ValueError):
    """Bad arguments to ingestion (not bad data: bad data is quarantined)."""


@dataclass(frozen=True)
class LandingFile:
    path: Path
    day: str

    @property
    def name(self) -> str:
        return self.path.name


def parse_day(day: str) -> date:
    """Parse an ISO day, with a clear error."""
    try:
        return date.fromisoformat(day)
    except (TypeError, ValueError) as exc:
        raise IngestionError(f"expected a day as YYYY-MM-DD, got {day!r}") from exc


def day_of_file(name: str) -> str | None:
    """The partition day a landing file belongs to: the first valid YYYY-MM-DD in its name."""
    for match in DAY_IN_NAME.finditer(name):
        try:
            date.fromisoformat(match.group(1))
        except ValueError:
            continue
        return match.group(1)
    return None


def list_landing_files(landing_dir: Path, pattern: str = "*") -> list[LandingFile]:
    """Every candidate landing file in a table's landing folder (not recursive, no dotfiles)."""
    return scan_landing_dir(landing_dir, pattern)[0]


def scan_landing_dir(landing_dir: Path, pattern: str = "*") -> tuple[list[LandingFile], list[str]]:
    """(landing files with a day in their name, notes on every other entry that is not one).

    Hidden names (a writer's temporary file) are skipped silently; anything else that is not a
    dated file matching ``pattern`` is named in a note, so nothing in the folder goes unmentioned.
    """
    landing_dir = Path(landing_dir)
    if not landing_dir.is_dir():
        return [], []
    found, notes = [], []
    for path in sorted(landing_dir.iterdir()):
        if path.name.startswith("."):
            continue
        if not fnmatch.fnmatchcase(path.name, pattern):
            notes.append(f"{path.name}: ignored, its name does not match the source's pattern {pattern!r}")
            continue
        day = day_of_file(path.name)
        if path.is_dir() and not path.is_symlink():
            notes.append(f"{path.name}: a folder, not a landing file; ignored")
            continue
        if day is None:
            notes.append(f"{path.name}: ignored, its name holds no day as YYYY-MM-DD (the day it belongs to)")
            continue
        if not path.is_file() and not path.is_symlink():
            notes.append(f"{path.name}: not a regular file; ignored")
            continue
        found.append(LandingFile(path, day))
    return found, notes


def files_for_day(landing_dir: Path, day: str, pattern: str = "*") -> list[LandingFile]:
    parse_day(day)
    return [f for f in list_landing_files(landing_dir, pattern) if f.day == day]
