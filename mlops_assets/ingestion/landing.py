"""Scan landing folders for new or changed days, by content hash (the new-data sensor's core)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mlops_assets.ingestion.schema import TableContract
from mlops_assets.ingestion.validate import landing_hash, list_landing_files
from mlops_assets.settings import DataPaths


@dataclass(frozen=True)
class DayChange:
    table: str
    day: str
    landing_hash: str
    files: tuple[str, ...]


@dataclass
class LandingScan:
    changes: list[DayChange]
    file_cache: dict[str, list]  # "table/name" -> [size, mtime_ns, sha256]
    requested: dict[str, str]  # "table:day" -> landing hash requested or found ingested
    files_checked: int = 0
    already_done: int = 0
    outside_partitions: list[str] = field(default_factory=list)

    def skip_reason(self) -> str:
        reason = (
            f"no new or changed landing files: {self.files_checked} file(s) checked, "
            f"{self.already_done} table-day(s) already ingested or requested"
        )
        if self.outside_partitions:
            shown = ", ".join(self.outside_partitions[:5])
            reason += f"; {len(self.outside_partitions)} table-day(s) outside the partitions ({shown})"
        return reason


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def ingested_landing_hash(paths: DataPaths, table: str, day: str) -> str | None:
    """The landing hash recorded when ``table`` was last ingested for ``day``, if any."""
    manifest = paths.manifest_path(table, day)
    try:
        return json.loads(manifest.read_text())["landing_hash"]
    except (OSError, ValueError, KeyError):
        return None


def scan_landing(
    paths: DataPaths,
    contracts: Iterable[TableContract],
    file_cache: dict[str, list],
    requested: dict[str, str],
    valid_days: set[str],
) -> LandingScan:
    """Find table-days whose landing files' content differs from what was requested or ingested.

    ``file_cache`` lets unchanged files (same size and mtime) skip re-hashing; the decision itself
    is always made on content hashes, so a touched but unchanged file is never requested again.
    """
    new_cache: dict[str, list] = {}
    scan = LandingScan(changes=[], file_cache=new_cache, requested=dict(requested))
    for contract in contracts:
        by_day: dict[str, list[tuple[str, str]]] = {}
        for landing in list_landing_files(paths.landing_dir(contract.landing_folder), contract.pattern):
            if landing.path.is_symlink():
                continue
            stat = landing.path.stat()
            key = f"{contract.name}/{landing.name}"
            cached = file_cache.get(key)
            if cached and cached[0] == stat.st_size and cached[1] == stat.st_mtime_ns:
                sha = cached[2]
            else:
                sha = file_sha256(landing.path)
            new_cache[key] = [stat.st_size, stat.st_mtime_ns, sha]
            by_day.setdefault(landing.day, []).append((landing.name, sha))
            scan.files_checked += 1
        for day, entries in sorted(by_day.items()):
            day_hash = landing_hash(entries)
            key = f"{contract.name}:{day}"
            if scan.requested.get(key) == day_hash:
                scan.already_done += 1
                continue
            if ingested_landing_hash(paths, contract.name, day) == day_hash:
                scan.requested[key] = day_hash
                scan.already_done += 1
                continue
            if day not in valid_days:
                scan.outside_partitions.append(f"{contract.name} {day}")
                continue
            scan.requested[key] = day_hash
            scan.changes.append(DayChange(contract.name, day, day_hash, tuple(name for name, _ in entries)))
    return scan
