"""The structure of a JSON text outside its strings, counted chunk by chunk with numpy (linear, a few
passes over the bytes): commas, arrays, and the nesting depth. Exact for valid JSON, whose strings and
escapes it follows across chunks; invalid JSON is its parser's to refuse."""

from __future__ import annotations

import numpy as np

# numpy works on slices of this many bytes, so a chunk of any size uses bounded scratch memory.
_SLICE = 1024 * 1024
_QUOTE, _BACKSLASH, _COMMA = ord('"'), ord("\\"), ord(",")
_OPEN_ARRAY, _CLOSE_ARRAY, _OPEN_OBJECT, _CLOSE_OBJECT = ord("["), ord("]"), ord("{"), ord("}")
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")
# A chunk with at most this many quotes is split at them in Python; one with more is scanned with numpy.
_FEW_QUOTES = 64


class Structure:
    def __init__(self) -> None:
        self.commas = self.arrays = self.depth = self.deepest = 0
        self._in_string = False
        self._backslashes = 0  # the run of backslashes that ended the previous chunk

    def feed(self, chunk: bytes) -> None:
        for start in range(0, len(chunk), _SLICE):
            self._feed(chunk[start : start + _SLICE])

    def _feed(self, chunk: bytes) -> None:
        # Rows of numbers hold no strings. A chunk with few quotes and no backslash (the V2 header around its
        # data, the REST one before it) splits at its quotes into strings and the text between them, whose
        # brackets and commas are all structure, counted by bytes.count and bytes.translate at a fraction of
        # the cost of following the text character by character (numpy), which the other chunks take: up to
        # the last quote, and the rest as text between strings.
        if b"\\" not in chunk and not self._backslashes:
            if chunk.count(b'"') <= _FEW_QUOTES:
                for index, part in enumerate(chunk.split(b'"')):
                    self._in_string ^= index > 0
                    if part and not self._in_string:
                        self._between_strings(part)
                return
            last = chunk.rfind(b'"')
        else:
            last = len(chunk) - 1
        self._scan(np.frombuffer(chunk, dtype=np.uint8, count=last + 1))
        rest = chunk[last + 1 :]
        if rest and not self._in_string:  # inside a string, the rest holds no structure
            self._between_strings(rest)

    def _between_strings(self, text: bytes) -> None:
        self.commas += text.count(b",")
        self.arrays += text.count(b"[")
        brackets = np.frombuffer(text.translate(None, _NOT_BRACKETS), dtype=np.uint8)
        opens = (brackets == _OPEN_ARRAY) | (brackets == _OPEN_OBJECT)
        self._track_depth(opens, ~opens)

    def _scan(self, text: np.ndarray) -> None:
        quotes = text == _QUOTE
        backslashes = text == _BACKSLASH
        if self._backslashes or backslashes.any():
            quotes &= self._unescaped(backslashes)
        parity = np.cumsum(quotes, dtype=np.int32) & 1
        outside = parity == 0 if not self._in_string else parity == 1
        if quotes.size:
            self._in_string ^= bool(parity[-1])
        self.commas += int(np.count_nonzero(outside & (text == _COMMA)))
        opens = outside & ((text == _OPEN_ARRAY) | (text == _OPEN_OBJECT))
        self.arrays += int(np.count_nonzero(opens & (text == _OPEN_ARRAY)))
        closes = outside & ((text == _CLOSE_ARRAY) | (text == _CLOSE_OBJECT))
        self._track_depth(opens, closes)

    def _track_depth(self, opens: np.ndarray, closes: np.ndarray) -> None:
        depth = self.depth + np.cumsum(opens.astype(np.int32) - closes)
        if depth.size:
            self.deepest = max(self.deepest, int(depth.max()))
            self.depth = int(depth[-1])

    def _unescaped(self, backslashes: np.ndarray) -> np.ndarray:
        """Where a character is not escaped: preceded by an even run of backslashes (runs cross chunks)."""
        index = np.arange(backslashes.size)
        last_other = np.maximum.accumulate(np.where(backslashes, -1, index))
        run = np.empty(backslashes.size, dtype=np.int64)
        run[0] = self._backslashes
        run[1:] = index[:-1] - last_other[:-1] + np.where(last_other[:-1] < 0, self._backslashes, 0)
        tail = backslashes.size - 1 - int(last_other[-1])
        self._backslashes = tail + (self._backslashes if last_other[-1] < 0 else 0)
        return run % 2 == 0
