"""A batch job's manifest: a CSV or JSONL file whose rows each name a source, its prompts and its settings.

Columns are the command line's names without the dashes (``image``, ``generation-prompt``,
``seed``, ``prompt``, ``steps``, ``scale``, ``negative-prompt``, ...; underscores work too), and an
optional ``id`` that names the row's files (else ``row-00001``, by its place in the file). A row
has an ``image`` (a path, relative to the manifest's folder, or an http(s) URL) or a
``generation-prompt`` and ``seed``; a row with an image may give a ``mask`` (named as the image is,
white where the edit may happen: the pipeline's ``mask_image``); ``prompt`` holds its prompts (in a
CSV cell separated by ';' or line breaks, in JSONL also a list). A setting left blank or out takes
the command line's value.

What is wrong with the file itself (not CSV or JSONL, an unknown column, a repeated id) is a
ConfigError("manifest") before any work; what is wrong with one row (a bad setting, neither image
nor generation prompt, a bad mask: ``check_masks``) is that row's ``error``, and the job goes on without
it. Torch-free at import.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

from pnp.app.form import split_prompts, whole_number
from pnp.config import RANGES, ConfigError, PnPConfig, check_seed
from pnp.evaluation.backends import Job
from pnp.evaluation.benchmarks import Source
from pnp.images import check_image, is_url, load_mask

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
ID = "id"
IMAGE = "image"
MASK = "mask"
# What a row's own id may be: it names the row's folder and record.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class Row:
    """One row of the manifest: its place (1-based), key, what it gives (by column), and its job or its error."""

    number: int
    key: str
    given: dict
    job: Job | None = None
    error: str | None = None


def columns(flag) -> dict[str, str]:
    """Column name -> what it sets (a PnPConfig field, ``seed``, ``image``, ``mask`` or ``id``), named by ``flag``."""
    params = [*PnPConfig.__dataclass_fields__, "seed"]
    return {ID: ID, IMAGE: IMAGE, MASK: MASK, **{flag(param).lstrip("-"): param for param in params}}


def read_manifest(path: str | Path, defaults: dict, flag) -> list[Row]:
    """The manifest's rows, each with its job (settings over ``defaults``, PnPConfig's fields and ``seed``) or error.

    ``flag`` gives a parameter's command-line flag (``pnp.app.cli.flag``): columns and messages use its names.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("manifest", f"no file at {path}")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ConfigError("manifest", f"{path} is neither .csv nor .jsonl; write the rows as one of them")
    known = columns(flag)
    records = _csv(path) if kind == "csv" else _jsonl(path)
    if not records:
        raise ConfigError("manifest", f"{path} has no rows")
    rows = []
    for number, record in enumerate(records, start=1):
        given = {_column(name, known, path): value for name, value in record.items() if not _blank(value)}
        rows.append(_row(number, given, known, defaults, path.parent, flag))
    _check_keys(rows, path)
    return rows


def _csv(path: Path) -> list[dict]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            records = list(csv.DictReader(file))
    except (UnicodeDecodeError, csv.Error) as err:
        raise ConfigError("manifest", f"{path} is not a CSV file in UTF-8 ({err})") from None
    for number, record in enumerate(records, start=1):
        if None in record:
            raise ConfigError("manifest", f"{path}, row {number}: more cells than the header has columns")
    return records


def _jsonl(path: Path) -> list[dict]:
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ConfigError("manifest", f"{path} is not text in UTF-8 ({err})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(
                "manifest", f"{path}, line {number}: not JSON ({err.msg}); write one object a line"
            ) from None
        if not isinstance(record, dict):
            raise ConfigError(
                "manifest", f'{path}, line {number}: expected an object ({{"image": ...}}), got {type(record).__name__}'
            )
        records.append(record)
    return records


def _blank(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _column(name: str, known: dict[str, str], path: Path) -> str:
    column = name.strip().lower().replace("_", "-")
    if column not in known:
        raise ConfigError("manifest", f"{path}: unknown column {name!r}; the columns are {', '.join(known)}")
    return column


def _row(number: int, given: dict, known: dict[str, str], defaults: dict, folder: Path, flag) -> Row:
    key = str(given.get(ID, f"row-{number:05d}")).strip()
    settings = dict(defaults)
    try:
        for column, value in given.items():
            param = known[column]
            if param not in (ID, IMAGE, MASK):
                settings[param] = _value(param, value)
        if "prompt" not in settings:
            raise ConfigError("prompt", "the row has no prompt: give it a prompt column, or pass --prompt")
        image = _location(given.get(IMAGE), folder, IMAGE)
        mask = _location(given.get(MASK), folder, "mask_image")
        seed = check_seed(settings.pop("seed", 0))
        if (image is None) == (settings.get("generation_prompt") is None):
            raise ConfigError(IMAGE, "give an image or a generation-prompt (and seed), one of the two")
        if mask is not None and image is None:
            raise ConfigError("mask_image", "a mask marks part of an image; a generated source has none to mark")
        config = PnPConfig(**settings)
    except ConfigError as err:
        return _failed(row=Row(number, key, given), err=err, flag=flag)
    source = Source(key, config.prompt, image, mask_file=mask)
    return Row(number, key, given, Job(source, config, seed if config.generating else 0))


def _failed(row: Row, err: ConfigError, flag) -> Row:
    return replace(row, job=None, error=f"{flag(err.param).lstrip('-')}: {err.reason}")


def _value(param: str, value):
    """A cell's value as PnPConfig takes it: numbers written as text (every CSV cell) read as numbers, as the form
    reads them; prompts in one text split as the form splits them."""
    if param == "prompt" and isinstance(value, str):
        return split_prompts(value)
    if param not in RANGES:
        return value
    if isinstance(RANGES[param][0], int):
        return whole_number(value)
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        raise ConfigError(param, f"expected a number, got {value.strip()!r}") from None


def _location(value, folder: Path, param: str) -> str | Path | None:
    """A row's image or mask: an http(s) URL as it is, a path relative to the manifest's folder made absolute."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(param, f"expected a path or URL, got {value!r}")
    return value.strip() if is_url(value.strip()) else (folder / value.strip()).resolve()


def check_masks(rows: list[Row], flag, model_resolution: int | None) -> list[Row]:
    """The rows, each whose mask breaks a mask rule (``pnp.pipelines.inputs.check_mask``, as the pipeline checks
    it) failed with its error: checked before any model loads, at each row's resolution, else the model's own
    (``model_resolution``, None where it is known only once the model loads: then the size rule waits). A mask or
    image named by URL, or not a file here, is checked when its row is translated (so that starting a job
    downloads nothing, and a cluster's workers may see files this process does not)."""
    local = [row for row in rows if _has_local_mask(row)]
    if not local:
        return rows
    from pnp.pipelines.inputs import check_mask  # imports torch: only for a manifest with masks

    checked = {}
    for row in local:
        source = row.job.source
        try:
            resolution = row.job.config.resolution or model_resolution
            check_mask(load_mask(source.mask_file), check_image(source.image), resolution, "the mask")
        except ConfigError as err:
            checked[row.key] = _failed(row, err, flag)
    return [checked.get(row.key, row) for row in rows]


def _has_local_mask(row: Row) -> bool:
    source = None if row.job is None else row.job.source
    if source is None or source.mask_file is None:
        return False
    # Files this process cannot see may be where Ray's worker nodes look: they are read, and checked, there.
    return all(not is_url(path) and Path(path).is_file() for path in (source.mask_file, source.image))


def _check_keys(rows: list[Row], path: Path) -> None:
    seen: dict[str, int] = {}
    for row in rows:
        if not _ID.match(row.key):
            raise ConfigError(
                "manifest",
                f"{path}, row {row.number}: id {row.key!r} cannot name files; use letters, digits, '.', '_' and '-'",
            )
        if row.key in seen:
            raise ConfigError(
                "manifest",
                f"{path}: rows {seen[row.key]} and {row.number} have the same id {row.key!r}; each row needs its own",
            )
        seen[row.key] = row.number
