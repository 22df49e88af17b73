"""The three record files of the experiment, in one place: schema, validation, resumable writing.

* prompt sets   (``data/*.jsonl``): what to ask, and the reference answer.
* outputs       (``outputs.jsonl``): one line per prompt x strategy, written by ``generate``.
* scores        (``scores.jsonl``): one line per output x scorer x aspect, written by ``score``.

Files are JSON Lines. A line ``{"_meta": {...}}`` records how the lines after it were made
(versions, device, seed, settings); every run that appends writes one, and the records it
writes carry its ``run_id``. Reading validates every line and reports the first bad one as
``PATH:LINE: field 'x': what is wrong``. Writing is append-only: a rerun skips keys already
present, and a partial last line left by a crash is moved aside before appending.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so two runs on one file are not detected there
    fcntl = None

META_KEY = "_meta"


class RecordError(ValueError):
    """A record file is invalid; ``str()`` is the one-line ``PATH:LINE: field 'x': ...`` message."""

    def __init__(self, path: str | os.PathLike, line: int | None, message: str, field: str | None = None):
        self.path, self.line, self.field, self.message = str(path), line, field, message
        where = self.path if line is None else f"{self.path}:{line}"
        what = message if field is None else f"field '{field}': {message}"
        super().__init__(f"{where}: {what}")


# ---------------------------------------------------------------------------------------------
# Schema: one table per record kind. A check returns None when the value is fine, else a reason.


def _text(value: Any) -> str | None:
    if (reason := _string(value)) is not None:
        return reason
    if not value.strip() or not any(ch.isprintable() and not ch.isspace() for ch in value):
        return "must not be empty or invisible"
    return None


def _string(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"expected a string, got {_json_type(value)}"
    try:  # JSON's \ud800 escapes decode to lone surrogates, which no tokenizer (or file) takes
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"not valid Unicode text: lone surrogate \\u{ord(value[err.start]):04x} at character {err.start + 1}"
    return None


def _text_or_texts(value: Any) -> str | None:
    if isinstance(value, list):
        if not value:
            return "expected a non-empty list of strings"
        for i, item in enumerate(value):
            reason = _text(item)
            if reason:
                return f"item {i}: {reason}"
        return None
    return _text(value)


def _int(minimum: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"expected an integer, got {_json_type(value)}"
        return None if value >= minimum else f"must be >= {minimum}, got {value}"

    return check


def _number(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"expected a number, got {_json_type(value)}"
    return None if math.isfinite(value) else f"must be finite, got {value}"


def _nonneg_number(value: Any) -> str | None:
    return _number(value) or (None if value >= 0 else f"must be >= 0, got {value}")


def _optional(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    return lambda value: None if value is None else check(value)


def _one_of(*allowed: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in allowed else f"expected one of {', '.join(map(repr, allowed))}, got {value!r}"[:200]
    return check


def _object(value: Any) -> str | None:
    return None if isinstance(value, dict) else f"expected an object, got {_json_type(value)}"


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"expected true or false, got {_json_type(value)}"


def _timings(value: Any) -> str | None:
    reason = _object(value)
    if reason:
        return reason
    for name in ("prefill_s", "total_s", "tokens_per_s"):
        if name not in value:
            return f"missing '{name}'"
        reason = _nonneg_number(value[name])
        if reason:
            return f"'{name}' {reason}"
    steps = value.get("decode_s", [])
    if not isinstance(steps, list) or any(_nonneg_number(s) for s in steps):
        return "'decode_s' must be a list of non-negative numbers (seconds per decode step)"
    return None


def _direction(value: Any) -> str | None:
    """A GPTScore direction: mean log-probability per target token, its sum and token count."""
    reason = _object(value)
    if reason:
        return reason
    for name, check in (("mean", _number), ("sum", _number), ("count", _int(1))):
        if name not in value:
            return f"missing '{name}'"
        reason = check(value[name])
        if reason:
            return f"'{name}' {reason}"
    if "truncated" in value and not isinstance(value["truncated"], bool):
        return "'truncated' must be true or false"
    return None


@dataclass(frozen=True)
class Field:
    name: str
    check: Callable[[Any], str | None]
    required: bool = True


@dataclass(frozen=True)
class Kind:
    """A record kind: its fields and the fields that identify a record (no two lines share them)."""

    name: str
    fields: tuple[Field, ...]
    key: tuple[str, ...]

    def validate(self, record: Any, path: str | os.PathLike, line: int | None) -> dict:
        if not isinstance(record, dict):
            raise RecordError(path, line, f"expected a JSON object, got {_json_type(record)}")
        for field in self.fields:
            if field.name not in record:
                if field.required:
                    raise RecordError(path, line, "missing", field.name)
                continue
            reason = field.check(record[field.name])
            if reason:
                raise RecordError(path, line, reason, field.name)
        return record

    def key_of(self, record: dict) -> tuple:
        return tuple(record[name] for name in self.key)


DIRECTIONS = ("ref_hyp", "hyp_ref", "src_hyp")
F_VARIANTS = ("avg_f", "prob_hm_f", "legacy_harm_f")

PROMPTS = Kind(
    "prompts",
    (
        Field("id", _text),
        Field("prompt", _text),
        Field("reference", _text_or_texts),
        Field("token_len", _optional(_int(1)), required=False),
        Field("num_chunks", _optional(_int(1)), required=False),
    ),
    key=("id",),
)

OUTPUTS = Kind(
    "outputs",
    (
        Field("id", _text),
        Field("strategy", _text),
        Field("chunk_size", _int(1)),
        Field("model", _text),
        Field("prompt", _text),
        Field("reference", _text_or_texts),
        Field("output", _string),  # a model may legitimately generate nothing (immediate EOS)
        Field("prompt_tokens", _int(1)),
        Field("output_tokens", _int(0)),
        Field("num_chunks", _int(1)),
        Field("generation", _object),
        Field("timings", _timings),
        Field("finish_reason", _one_of("eos", "length"), required=False),  # absent in older files
        Field("peak_memory_bytes", _optional(_int(0))),
        Field("device", _text),
        Field("run_id", _string, required=False),
    ),
    key=("id", "strategy"),
)

SCORES = Kind(
    "scores",
    (
        Field("id", _text),
        Field("strategy", _text),
        Field("scorer", _text),
        Field("aspect", _text),
        Field("template", _string),
        *(Field(d, _direction, required=False) for d in DIRECTIONS),
        *(Field(f, _number, required=False) for f in F_VARIANTS),
        Field("num_chunks", _optional(_int(1)), required=False),
        Field("run_id", _string, required=False),
    ),
    key=("id", "strategy", "scorer", "aspect"),
)

KINDS = {kind.name: kind for kind in (PROMPTS, OUTPUTS, SCORES)}


# Fields only one kind has (prompt sets have none that outputs lack).
_OWN_FIELDS = {kind: {f.name for f in kind.fields} - {f.name for other in KINDS.values() if other is not kind
                                                     for f in other.fields}
               for kind in (SCORES, OUTPUTS)}


def detect_kind(record: dict) -> Kind:
    """Which kind a record is (used by ``gptscore validate``): the kind with most of its own fields
    present, so a record missing one of them (``scorer``, ``output``) is still told apart and its
    error names the field it lacks; then outputs if it has a strategy; else a prompt."""
    kind, own = max(_OWN_FIELDS.items(), key=lambda item: len(item[1] & record.keys()))
    if own & record.keys():
        return kind
    return OUTPUTS if "strategy" in record else PROMPTS


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass
class RecordFile:
    """A validated record file: its kind, the records in order, and the run metadata lines."""

    path: Path
    kind: Kind
    records: list[dict]
    meta: list[dict]

    def keys(self) -> set[tuple]:
        return {self.kind.key_of(r) for r in self.records}

    def counts(self, field: str = "strategy") -> Counter:
        return Counter(r.get(field) for r in self.records)


def _lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, raw bytes without newline, whether the line was newline-terminated)."""
    data = path.read_bytes()
    start, number = 0, 0
    while start < len(data):
        number += 1
        end = data.find(b"\n", start)
        if end < 0:
            yield number, data[start:], False
            return
        yield number, data[start:end], True
        start = end + 1


def _parse(path: Path, number: int, raw: bytes, terminated: bool) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RecordError(path, number, f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1})")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        if not terminated:
            raise RecordError(
                path, number, "truncated last line (a crash while writing?); rerunning the writer repairs it"
            )
        raise RecordError(path, number, f"invalid JSON: {err.msg} at column {err.colno}")
    except RecursionError:
        raise RecordError(path, number, "invalid JSON: nested too deeply") from None
    except ValueError as err:  # e.g. an integer longer than Python converts
        raise RecordError(path, number, f"invalid JSON: {err}") from None


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Parsed JSON values with their line numbers; blank lines are skipped."""
    path = Path(path)
    for number, raw, terminated in _lines(path):
        if raw.strip():
            yield number, _parse(path, number, raw, terminated)


def read_records(path: str | os.PathLike, kind: str | Kind | None = None, *, allow_empty: bool = False) -> RecordFile:
    """Read and validate a whole file; raise RecordError at the first invalid line.

    ``kind`` is "prompts", "outputs", "scores", or None to tell from the first record.
    """
    path = Path(path)
    if not path.is_file():
        raise RecordError(path, None, "no such file")
    expected = KINDS[kind] if isinstance(kind, str) else kind
    records: list[dict] = []
    meta: list[dict] = []
    seen: dict[tuple, int] = {}
    for number, value in iter_lines(path):
        if isinstance(value, dict) and META_KEY in value:
            if not isinstance(value[META_KEY], dict):
                raise RecordError(path, number, "expected an object", META_KEY)
            meta.append(value[META_KEY])
            continue
        if expected is None:
            expected = detect_kind(value) if isinstance(value, dict) else PROMPTS
        record = expected.validate(value, path, number)
        key = expected.key_of(record)
        if key in seen:
            shown = ", ".join(f"{k}={v!r}" for k, v in zip(expected.key, key))
            raise RecordError(path, number, f"duplicate key ({shown}), first on line {seen[key]}", expected.key[0])
        seen[key] = number
        records.append(record)
    if not records and not allow_empty:
        raise RecordError(path, None, "empty file: no records")
    return RecordFile(path, expected or PROMPTS, records, meta)


# ---------------------------------------------------------------------------------------------
# Writing


def run_metadata(settings: dict | None = None, **extra: Any) -> dict:
    """Versions, device and settings of the run that is about to write records."""
    versions = {"python": platform.python_version()}
    for name in ("torch", "triton", "transformers", "gptscore_eval"):
        module = sys.modules.get(name)
        if module is None:
            try:
                module = __import__(name)
            except Exception:  # an optional package that is absent is just not recorded
                continue
        versions[name] = getattr(module, "__version__", "unknown")
    device = "cpu"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    return {
        "run_id": uuid.uuid4().hex[:12],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": sys.argv,
        "host": platform.node(),
        "platform": platform.platform(),
        "device": device,
        "versions": versions,
        "settings": settings or {},
        **extra,
    }


def settings_by_run(metas: list[dict]) -> dict:
    """run_id -> the settings that run recorded, through the runs a merged file names (records
    merged from torchrun shards keep their rank's run id)."""
    runs = {}
    for m in metas:
        runs[m.get("run_id")] = m.get("settings", {})
        runs.update(settings_by_run(m.get("merged_from", [])))
    return runs


class RecordWriter:
    """Append records to a JSONL file so that a crash or a rerun never loses or duplicates one.

    On open, existing lines are validated and their keys remembered; a partial last line (a
    crash mid-write) is moved to ``PATH.partial`` and cut off. ``pending(records)`` filters out
    what is already done; ``write(record)`` validates, appends and flushes one line. The run's
    metadata line is written just before the first record, so a rerun with nothing to do leaves
    the file byte-identical.
    """

    def __init__(self, path: str | os.PathLike, kind: str | Kind, meta: dict | None = None):
        self.path = Path(path)
        self.kind = KINDS[kind] if isinstance(kind, str) else kind
        self.meta = meta if meta is not None else run_metadata()
        self.repaired_bytes = 0
        self._file = None
        self.existing: list[dict] = []  # the records already in the file when it was opened
        self.existing_meta: list[dict] = []  # and the metadata lines of the runs that wrote them
        self.path.parent.mkdir(parents=True, exist_ok=True)  # a bad --out fails now, not after the work
        self._lock = _lock(self.path)
        try:
            if self.path.exists():
                self.repaired_bytes = repair_partial_last_line(self.path)
                found = read_records(self.path, self.kind, allow_empty=True)
                self.existing, self.existing_meta = found.records, found.meta
        except BaseException:
            _unlock(self._lock)
            raise
        self._keys = {self.kind.key_of(r) for r in self.existing}

    @property
    def run_id(self) -> str:
        return self.meta["run_id"]

    def __contains__(self, key: tuple) -> bool:
        return tuple(key) in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def pending(self, records: Iterable[dict]) -> list[dict]:
        """The records whose key is not yet in the file (first occurrence of each key)."""
        return split_done(self.kind, records, self._keys)[0]

    def write(self, record: dict) -> None:
        # A record copied from another file (a merged shard) keeps the run id it was made by.
        record = {**record, "run_id": record.get("run_id") or self.run_id}
        self.kind.validate(record, self.path, None)
        key = self.kind.key_of(record)
        if key in self._keys:
            raise ValueError(f"{self.path}: record {key} is already written")
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")
            self._append({META_KEY: self.meta})
        self._append(record)
        self._keys.add(key)

    def _append(self, value: dict) -> None:
        self._file.write(json.dumps(value, ensure_ascii=False, allow_nan=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        _unlock(self._lock)
        self._lock = None

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def split_done(kind: Kind, records: Iterable[dict], done: set[tuple]) -> tuple[list[dict], int]:
    """(the records whose key is not in ``done``, first occurrence of each; how many were in it)."""
    remaining, seen, skipped = [], set(done), 0
    for record in records:
        key = kind.key_of(record)
        if key in done:
            skipped += 1
        elif key not in seen:
            seen.add(key)
            remaining.append(record)
    return remaining, skipped


def _lock(path: Path) -> tuple[int, Path] | None:
    """Hold ``.NAME.lock`` next to PATH exclusively, or fail at once: two runs appending to one
    file would each compute the same pending records and write every one of them twice."""
    if fcntl is None:
        return None
    lock_path = path.with_name(f".{path.name}.lock")
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RecordError(path, None, f"another run is writing this file (it holds {lock_path.name})") from None
        try:
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                return fd, lock_path
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder removed it while we opened it: lock the one there now


def _unlock(lock: tuple[int, Path] | None) -> None:
    if lock is not None:
        fd, lock_path = lock
        lock_path.unlink(missing_ok=True)  # before releasing: a run that opened it sees it gone
        os.close(fd)


def repair_partial_last_line(path: Path) -> int:
    """Cut off an unterminated last line that is not valid JSON; return how many bytes were cut.

    The cut bytes are appended to ``PATH.partial`` so that nothing written is ever destroyed.
    A complete JSON value that only lacks its newline gets the newline instead.
    """
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    start = data.rfind(b"\n") + 1
    tail = data[start:]
    try:
        json.loads(tail.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        with open(path.with_name(path.name + ".partial"), "ab") as aside:
            aside.write(tail + b"\n")
        with open(path, "r+b") as f:
            f.truncate(start)
        return len(tail)
    with open(path, "ab") as f:
        f.write(b"\n")
    return 0


def write_records(path: str | os.PathLike, kind: str | Kind, records: Iterable[dict]) -> None:
    """Write a complete file at once (prompt sets, fixtures), replacing it atomically."""
    kind = KINDS[kind] if isinstance(kind, str) else kind
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    seen: set[tuple] = set()
    with open(tmp, "w", encoding="utf-8") as f:
        for number, record in enumerate(records, 1):
            kind.validate(record, path, number)
            key = kind.key_of(record)
            if key in seen:
                raise RecordError(path, number, f"duplicate key {key}", kind.key[0])
            seen.add(key)
            f.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
    os.replace(tmp, path)
