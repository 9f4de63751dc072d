"""Wildcard patterns for group selectors: matching a value, and deciding whether two patterns
can both match one value (so that equally specific groups that could tie are refused at load).

Only `*` (any run of characters) and `?` (one character) are special; everything else is
literal, including `[`. Pure functions, no I/O.
"""

from __future__ import annotations

import functools
import re

HEX = frozenset("0123456789abcdef")
#: The characters allowed at each position of a MAC written aa:bb:cc:dd:ee:ff.
MAC_POSITIONS: tuple[frozenset, ...] = tuple(frozenset(":") if i % 3 == 2 else HEX for i in range(17))
_MAC_PATTERN = re.compile(r"^[0-9a-f:*?]{1,17}$")


def has_wildcard(pattern: str) -> bool:
    return "*" in pattern or "?" in pattern


@functools.lru_cache(maxsize=4096)
def _regex(pattern: str) -> re.Pattern:
    parts = [".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern]
    return re.compile("".join(parts) + r"\Z", re.DOTALL)


def matches(pattern: str, value: str) -> bool:
    """True when the whole value matches the pattern (case-sensitive; callers normalise case)."""
    if not has_wildcard(pattern):
        return pattern == value
    return _regex(pattern).match(value) is not None


def normalise_mac_pattern(value) -> str | None:
    """'52-54-00-*' -> '52:54:00:*'; None when it cannot describe a MAC.
    A pattern without wildcards must be a whole MAC (aa:bb:cc:dd:ee:ff)."""
    text = str(value).strip().lower().replace("-", ":")
    if not _MAC_PATTERN.match(text):
        return None
    if not has_wildcard(text):
        return text if re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", text) else None
    if not overlap(text, text, MAC_POSITIONS):  # e.g. '52:54:00:1?' is too short for any MAC
        return None
    return text


def overlap(p: str, q: str, positions: tuple[frozenset, ...] | None = None) -> bool:
    """Can one string match both patterns? With `positions`, only strings of exactly that
    length whose i-th character is in positions[i] count (used for MACs).

    A breadth-first walk over pairs of pattern positions (the product of the two patterns'
    automata); `*` may consume nothing or one character and stay."""
    if positions is None:
        alphabet = frozenset(p + q) - {"*", "?"} | {"\x00"}  # \x00 stands for any other character
    start = (0, 0, 0)
    seen = {start}
    todo = [start]
    while todo:
        i, j, k = todo.pop()
        if i == len(p) and j == len(q) and (positions is None or k == len(positions)):
            return True
        nxt = []
        if i < len(p) and p[i] == "*":
            nxt.append((i + 1, j, k))
        if j < len(q) and q[j] == "*":
            nxt.append((i, j + 1, k))
        if positions is not None:
            if k >= len(positions):
                chars = ()
            else:
                chars = positions[k]
        else:
            chars = alphabet
        for c in chars:
            a = _step(p, i, c)
            if a is None:
                continue
            b = _step(q, j, c)
            if b is None:
                continue
            nxt.append((a, b, k + 1 if positions is not None else 0))
        for state in nxt:
            if state not in seen:
                seen.add(state)
                todo.append(state)
    return False


def _step(pattern: str, i: int, c: str) -> int | None:
    """Position after consuming c at position i, or None when the pattern cannot take c."""
    if i >= len(pattern):
        return None
    ch = pattern[i]
    if ch == "*":
        return i
    if ch == "?" or ch == c:
        return i + 1
    return None
