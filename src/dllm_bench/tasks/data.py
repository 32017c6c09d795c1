"""Local benchmark files: where they must be, and a line-by-line check before anything loads them.

A task given ``data_dir`` reads only the files named here (JSON lines, optionally gzipped) and
never the network. ``check_jsonl`` parses every line first, so a missing file, a bad line or a row
without a needed field fails at once with a one-line message naming the file and the line number.
"""
from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from pathlib import Path


def open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def check_jsonl(path: Path, keys: Sequence[str]) -> int:
    """Number of rows in a JSON-lines file whose every row is an object holding ``keys``."""
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    n = 0
    try:
        with open_text(path) as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: malformed JSON ({e.msg}, column {e.colno})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                missing = [k for k in keys if k not in row]
                if missing:
                    raise ValueError(f"{path}:{lineno}: missing field(s) {', '.join(map(repr, missing))}")
                n += 1
    except (OSError, EOFError, UnicodeDecodeError) as e:  # e.g. a truncated .gz or binary junk
        raise ValueError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    if n == 0:
        raise ValueError(f"{path}: no rows")
    return n


def local_files(data_dir: str | Path, files: dict[str, Sequence[str]], keys: Sequence[str]) -> dict[str, str]:
    """split -> path of the first existing candidate file in ``data_dir``, each one checked.

    ``files`` maps a split to candidate names (e.g. ``HumanEval.jsonl.gz`` then ``HumanEval.jsonl``).
    """
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir not found: {root}")
    out = {}
    for split, names in files.items():
        found = next((root / n for n in names if (root / n).is_file()), None)
        if found is None:
            raise FileNotFoundError(f"missing data file {root / names[0]} (split {split!r}; "
                                    f"rows need {', '.join(keys)})")
        check_jsonl(found, keys)
        out[split] = str(found.resolve())
    return out
