"""Read the elements of a huge top-level JSON array one by one (Visual Genome's ``region_descriptions.json``)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")
_JSON_NUMBER_TAIL = re.compile(r"[0-9.eE+\-]*")


class _TextChunks:
    """A sliding window over a text file, refilled in chunks."""

    def __init__(self, file: IO[str], chunk_chars: int) -> None:
        self.file = file
        self.chunk_chars = chunk_chars
        self.text = ""
        self.pos = 0
        self.offset = 0  # characters dropped from the front of ``text`` so far
        self.eof = False

    def refill(self) -> bool:
        if self.eof:
            return False
        data = self.file.read(self.chunk_chars)
        if not data:
            self.eof = True
            return False
        self.offset += self.pos
        self.text = self.text[self.pos :] + data
        self.pos = 0
        return True

    def peek(self) -> str:
        """The next non-whitespace character (consuming the whitespace), or ``""`` at the end of the file."""
        while True:
            self.pos = _JSON_WHITESPACE.match(self.text, self.pos).end()
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.refill():
                return ""


def iter_json_array(path: Path, *, chunk_chars: int = 1 << 20, max_element_chars: int = 1 << 26) -> Iterator[Any]:
    """Yield the elements of the top-level JSON array in ``path`` one by one.

    Memory holds one element (plus a chunk), not the whole file:
    ``region_descriptions.json`` is about 0.7 GB of JSON and several GB as
    Python objects.
    """
    decoder = json.JSONDecoder()
    with path.open(encoding="utf-8") as file:
        chunks = _TextChunks(file, chunk_chars)
        if chunks.peek() != "[":
            raise ValueError(f"{path}: expected a JSON array starting with '['")
        chunks.pos += 1
        first = True
        while True:
            char = chunks.peek()
            if char == "]":
                chunks.pos += 1
                if chunks.peek():
                    raise ValueError(f"{path}: unexpected data after the JSON array")
                return
            if not char:
                raise ValueError(f"{path}: the JSON array is not closed (file truncated?)")
            if not first:
                if char != ",":
                    raise ValueError(f"{path}: expected ',' or ']' at character {chunks.offset + chunks.pos}")
                chunks.pos += 1
                chunks.peek()
            first = False
            while True:
                try:
                    value, end = decoder.raw_decode(chunks.text, chunks.pos)
                except json.JSONDecodeError as exc:
                    if len(chunks.text) - chunks.pos > max_element_chars or not chunks.refill():
                        raise ValueError(
                            f"{path}: not valid JSON ({exc.msg} at character {chunks.offset + exc.pos})"
                        ) from exc
                    continue
                is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
                if is_number and _JSON_NUMBER_TAIL.fullmatch(chunks.text, end) and chunks.refill():
                    continue  # "1" may be the start of "1.5e3" in the next chunk
                break
            chunks.pos = end
            yield value
