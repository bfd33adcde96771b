"""Import customers from a CSV file into the embedded CRM.

Columns (header required, any order, case-insensitive)::

    customer_id,name,segment,phones,email,company,timezone,tags,products,do_not_call

``customer_id``, ``name`` and ``phones`` are required; ``country`` (ISO 3166 region
of the row's national numbers) and ``language`` are optional extras. ``phones``,
``tags`` and ``products`` hold ``;``-separated lists; a phone may carry its kind:
``mobile:+1 917 555 0177;fax:030/1234568``.

Every row is validated completely before anything is written, then written in one
transaction: a bad row is reported with its line number, column and value and never
half-written; it does not stop the import. A customer id seen again (later in the
file, or in a second import) updates that customer, so re-importing is idempotent.
"""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tqdm import tqdm

from cti.crm.phone import check_region, normalise
from cti.crm.sqlite import PHONE_KIND_RANK, SqliteCrm
from cti.errors import ConfigError, ImportRowError
from cti.log import get_logger

log = get_logger(__name__)

COLUMNS = ("customer_id", "name", "segment", "phones", "email", "company", "timezone",
           "tags", "products", "do_not_call")
EXTRA_COLUMNS = ("country", "language")
REQUIRED = ("customer_id", "name", "phones")
SEGMENTS = ("standard", "bronze", "silver", "gold", "platinum")

_CUSTOMER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_TAG = re.compile(r"[a-z0-9_][a-z0-9_-]{0,39}")
_KIND_PREFIX = re.compile(r"([A-Za-z_]+)\s*:\s*(.*)")
_TRUE = {"1", "true", "yes", "y", "x"}
_FALSE = {"", "0", "false", "no", "n"}


class Rejection(NamedTuple):
    """One problem: the file line it is on, the column (None: the whole row), why."""

    line: int
    column: str | None
    reason: str

    def __str__(self) -> str:
        where = f"line {self.line}" + (f", column {self.column!r}" if self.column else "")
        return f"{where}: {self.reason}"


@dataclass(slots=True)
class ImportReport:
    """What :func:`import_csv` did. ``rejected`` lists every problem of every bad row."""

    path: str
    imported: int = 0
    updated: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    warnings: list[Rejection] = field(default_factory=list)  # row kept, something ignored

    @property
    def rejected_lines(self) -> list[int]:
        return sorted({r.line for r in self.rejected})

    def summary(self) -> str:
        """A few lines for a terminal: counts, then each problem with its line."""
        head = (f"{self.path}: {self.imported} imported, {self.updated} updated, "
                f"{len(self.rejected_lines)} rows rejected")
        lines = [head]
        lines += [f"  rejected {r}" for r in self.rejected]
        lines += [f"  warning  {w}" for w in self.warnings]
        return "\n".join(lines)


class _Bad(Exception):
    def __init__(self, column: str | None, reason: str) -> None:
        super().__init__(reason)
        self.column = column
        self.reason = reason


async def import_csv(crm: SqliteCrm, path: Path | str, region: str,
                     progress: bool = True) -> ImportReport:
    """Import ``path`` into ``crm``; national numbers are read with ``region``.

    Runs on the CRM's worker thread; the progress bar goes to stderr when it is a
    terminal. Returns an :class:`ImportReport`. Raises :class:`ConfigError` if the
    file cannot be read or ``region`` is unknown, :class:`ImportRowError` if the
    header is missing or lacks a required column (nothing is written then), and
    :class:`~cti.errors.CrmError` if the database itself fails (rows already
    imported stay).
    """
    return await crm.run_blocking(import_csv_sync, crm, path, region, progress)


def import_csv_sync(crm: SqliteCrm, path: Path | str, region: str,
                    progress: bool = True) -> ImportReport:
    """Blocking body of :func:`import_csv`."""
    region = check_region(region)
    path = Path(path)
    report = ImportReport(path=str(path))
    try:
        total = max(0, path.read_bytes().count(b"\n"))
        handle = path.open(encoding="utf-8-sig", errors="surrogateescape", newline="")
    except OSError as exc:
        raise ConfigError(f"cannot read import file {str(path)!r}: {exc.strerror}") from None

    show = progress and sys.stderr.isatty()
    with handle, tqdm(total=total, unit="lines", desc=f"import {path.name}",
                      file=sys.stderr, disable=not show) as bar:
        rows = _rows(handle, report)
        header = _header(next(rows, None), path, report)
        seen = 1
        for line, end, values in rows:
            bar.update(end - seen)
            seen = end
            _import_row(crm, header, line, values, region, report)

    log.info("crm import finished", file=str(path), imported=report.imported,
             updated=report.updated, rejected=len(report.rejected_lines))
    return report


def _rows(handle: Any, report: ImportReport) -> Iterator[tuple[int, int, list[str]]]:
    """``(first line, last line, fields)`` per non-blank CSV record."""
    reader = csv.reader(handle, strict=False)
    end = 0
    while True:
        start = end + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if reader.line_num == end:      # the reader cannot move on: stop here
                report.rejected.append(Rejection(start, None, f"unreadable CSV: {exc}"))
                return
            end = reader.line_num
            report.rejected.append(Rejection(start, None, f"unreadable CSV: {exc}"))
            continue
        end = reader.line_num
        if not any(v.strip() for v in values):
            continue
        yield start, end, values


def _header(first: tuple[int, int, list[str]] | None, path: Path,
            report: ImportReport) -> list[str]:
    if first is None:
        raise ImportRowError(f"import file {str(path)!r} is empty: expected a header line "
                             f"{','.join(COLUMNS)}")
    line, _, values = first
    names = [v.strip().lstrip("\ufeff").lower() for v in values]
    shown = ", ".join(repr(v.strip()) for v in values[:10])
    if any(_not_utf8(n) for n in names):
        raise ImportRowError(f"{path.name} line {line}: the header is not UTF-8 text "
                             f"(found {shown})")
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise ImportRowError(
            f"{path.name} line {line}: header is missing column(s) "
            f"{', '.join(repr(m) for m in missing)} (found {shown}); expected a first line "
            f"like {','.join(COLUMNS)}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ImportRowError(f"{path.name} line {line}: header names column(s) "
                             f"{', '.join(repr(d) for d in duplicates)} twice")
    for name in names:
        if name not in COLUMNS and name not in EXTRA_COLUMNS:
            report.warnings.append(Rejection(line, name, "unknown column, ignored"))
    return names


def _import_row(crm: SqliteCrm, header: list[str], line: int, values: list[str],
                region: str, report: ImportReport) -> None:
    if len(values) != len(header):
        report.rejected.append(Rejection(
            line, None, f"expected {len(header)} fields, got {len(values)} "
            "(a value containing a comma must be in double quotes)"))
        return
    cells = dict(zip(header, (v.strip() for v in values), strict=True))

    problems: list[Rejection] = []
    warnings: list[Rejection] = []
    for column, value in cells.items():
        if _not_utf8(value):
            bad = value.encode("utf-8", "surrogateescape")
            problems.append(Rejection(line, column, f"value {bad!r} is not UTF-8 text "
                                      "(save the file as UTF-8)"))
    if problems:
        report.rejected.extend(problems)
        return

    fields: dict[str, Any] = {}
    for column, check in _CHECKS.items():
        try:
            fields[column] = check(cells.get(column, ""))
        except _Bad as bad:
            problems.append(Rejection(line, bad.column or column, bad.reason))
    country = fields.pop("country", None)
    if not problems:
        try:
            fields["phones"] = _phones(cells["phones"], country or region, line, warnings)
        except _Bad as bad:
            problems.append(Rejection(line, "phones", bad.reason))
    if problems:
        report.rejected.extend(problems)
        return

    created = crm.upsert_customer(
        fields["customer_id"], fields["name"], segment=fields["segment"],
        phones=fields["phones"], email=fields["email"], company=fields["company"],
        timezone=fields["timezone"], language=fields["language"],
        region=country,
        do_not_call=fields["do_not_call"], tags=fields["tags"], products=fields["products"])
    report.warnings.extend(warnings)
    if created:
        report.imported += 1
    else:
        report.updated += 1


def _not_utf8(text: str) -> bool:
    # Undecodable bytes come through surrogateescape as lone surrogates U+DC80..U+DCFF.
    return any("\udc80" <= ch <= "\udcff" for ch in text)


# --- one check per column: return the clean value or raise _Bad -------------------


def _customer_id(value: str) -> str:
    if not _CUSTOMER_ID.fullmatch(value):
        raise _Bad(None, f"customer id {value!r}: expected 1-64 letters, digits, '_.:-'")
    return value


def _name(value: str) -> str:
    if not value:
        raise _Bad(None, "name is empty")
    return value


def _segment(value: str) -> str:
    segment = value.lower() or "standard"
    if segment not in SEGMENTS:
        raise _Bad(None, f"segment {value!r}: expected one of {', '.join(SEGMENTS)}")
    return segment


def _email(value: str) -> str | None:
    if value and not _EMAIL.fullmatch(value):
        raise _Bad(None, f"email {value!r} is not an address like name@example.com")
    return value or None


def _timezone(value: str) -> str | None:
    if not value:
        return None
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise _Bad(None, f"timezone {value!r} is not an IANA zone like "
                         "'America/New_York'") from None
    return value


def _tags(value: str) -> list[str]:
    tags = [t.strip().lower() for t in value.split(";") if t.strip()]
    for tag in tags:
        if not _TAG.fullmatch(tag):
            raise _Bad(None, f"tag {tag!r}: expected letters, digits, '_' or '-'")
    return list(dict.fromkeys(tags))


def _products(value: str) -> list[str]:
    return list(dict.fromkeys(p.strip() for p in value.split(";") if p.strip()))


def _do_not_call(value: str) -> bool:
    low = value.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise _Bad(None, f"do_not_call {value!r}: expected yes/no, true/false or 1/0")


def _country(value: str) -> str | None:
    if not value:
        return None
    try:
        return check_region(value)
    except ConfigError:
        raise _Bad(None, f"country {value!r} is not an ISO 3166 region code like "
                         "'US' or 'DE'") from None


def _optional(value: str) -> str | None:
    return value or None


_CHECKS = {
    "customer_id": _customer_id, "name": _name, "segment": _segment, "email": _email,
    "company": _optional, "timezone": _timezone, "tags": _tags, "products": _products,
    "do_not_call": _do_not_call, "country": _country, "language": _optional,
}


def _phones(value: str, region: str, line: int,
            warnings: list[Rejection]) -> list[tuple[str, str]]:
    """``[(kind, raw)]``; raises _Bad unless at least one number is usable."""
    phones: list[tuple[str, str]] = []
    usable = 0
    for entry in (e.strip() for e in value.split(";")):
        if not entry:
            continue
        kind, raw = "phone", entry
        prefixed = _KIND_PREFIX.fullmatch(entry)
        if prefixed:
            kind, raw = prefixed.group(1).lower(), prefixed.group(2).strip()
            if kind not in PHONE_KIND_RANK:
                raise _Bad("phones", f"phone kind {kind!r} in {entry!r}: expected one of "
                                     f"{', '.join(PHONE_KIND_RANK)}")
        number = normalise(raw, region)
        if number.usable:
            usable += 1
        else:
            warnings.append(Rejection(line, "phones", f"phone {raw!r} is not a usable number "
                                      f"({number.reason}); kept as typed, never matched"))
        phones.append((kind, raw))
    if not usable:
        raise _Bad("phones", f"no usable phone number in {value!r}")
    return phones
