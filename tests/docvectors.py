"""Golden vectors embedded in Markdown docs, so tests can stop docs from drifting.

A vector is a marker comment followed by a fenced block of whitespace-separated
tokens::

    <!-- vector: some.name -->
    ```
    01 02 03
    ```

Only blank lines may sit between the marker and the opening fence.
"""

from __future__ import annotations

import re
from pathlib import Path

_MARKER = re.compile(r"^\s*<!--\s*vector:\s*(?P<name>\S+)\s*-->\s*$")
_FENCE = re.compile(r"^\s*```")


def load_vectors(path: str | Path) -> dict[str, list[str]]:
    """Map each vector name in the Markdown file to its tokens, in document order.

    Raises ValueError on a malformed or duplicate vector, because a silently
    skipped vector would be a test that checks nothing.
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    vectors: dict[str, list[str]] = {}
    i = 0
    while i < len(lines):
        marker = _MARKER.match(lines[i])
        i += 1
        if marker is None:
            continue
        name = marker["name"]
        where = f"{path}:{i}: vector {name!r}"
        if name in vectors:
            raise ValueError(f"{where}: duplicate name")
        while i < len(lines) and not lines[i].strip():
            i += 1
        if i >= len(lines) or not _FENCE.match(lines[i]):
            raise ValueError(f"{where}: marker not followed by a fenced block")
        i += 1
        tokens: list[str] = []
        while i < len(lines) and not _FENCE.match(lines[i]):
            tokens.extend(lines[i].split())
            i += 1
        if i >= len(lines):
            raise ValueError(f"{where}: unterminated fenced block")
        i += 1
        if not tokens:
            raise ValueError(f"{where}: empty block")
        vectors[name] = tokens
    return vectors
