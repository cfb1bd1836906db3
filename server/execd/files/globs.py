"""Search patterns: doublestar-style globs matched against a base name.

`*` and `**` match any run of characters, `?` one character, `[abc]`, `[a-z]`, `[!x]` and
`[^x]` a class, `{a,b}` alternatives (nested too), and `\\` escapes the next character.
Matching is case-sensitive. A base name has no `/`, so a pattern with one never matches.
"""

from __future__ import annotations

import re
from collections.abc import Callable


class BadPattern(ValueError):
    pass


def compile_glob(pattern: str) -> Callable[[str], bool]:
    """A predicate on base names; raises `BadPattern` naming what is malformed."""
    regex, end = _sequence(pattern, 0, in_braces=False)
    assert end == len(pattern)
    compiled = re.compile(regex + r"\Z", re.DOTALL)
    return lambda name: compiled.match(name) is not None


def _sequence(pattern: str, i: int, *, in_braces: bool) -> tuple[str, int]:
    out: list[str] = []
    while i < len(pattern):
        c = pattern[i]
        if in_braces and c in ",}":
            break
        if c == "\\":
            if i + 1 == len(pattern):
                raise BadPattern(f"pattern {pattern!r} ends with a lone '\\'")
            out.append(re.escape(pattern[i + 1]))
            i += 2
        elif c == "*":
            while i < len(pattern) and pattern[i] == "*":
                i += 1
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            regex, i = _char_class(pattern, i)
            out.append(regex)
        elif c == "{":
            alternatives: list[str] = []
            i += 1
            while True:
                regex, i = _sequence(pattern, i, in_braces=True)
                alternatives.append(regex)
                if i == len(pattern):
                    raise BadPattern(f"pattern {pattern!r} has a '{{' without its '}}'")
                i += 1
                if pattern[i - 1] == "}":
                    break
            out.append("(?:" + "|".join(alternatives) + ")")
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out), i


def _char_class(pattern: str, start: int) -> tuple[str, int]:
    i = start + 1
    negate = i < len(pattern) and pattern[i] in "!^"
    if negate:
        i += 1
    items: list[str] = []
    while True:
        if i >= len(pattern):
            raise BadPattern(f"pattern {pattern!r} has a '[' without its ']'")
        c = pattern[i]
        if c == "]" and items:
            break
        if c == "\\":
            if i + 1 == len(pattern):
                raise BadPattern(f"pattern {pattern!r} ends with a lone '\\'")
            c = pattern[i + 1]
            i += 1
        i += 1
        if i + 1 < len(pattern) and pattern[i] == "-" and pattern[i + 1] != "]":
            high = pattern[i + 1]
            if high == "\\" and i + 2 < len(pattern):
                high = pattern[i + 2]
                i += 1
            if high < c:
                raise BadPattern(f"pattern {pattern!r} has a backwards range {c}-{high}")
            items.append(re.escape(c) + "-" + re.escape(high))
            i += 2
        else:
            items.append(re.escape(c))
    body = "".join(items)
    return (f"[^/{body}]" if negate else f"[{body}]"), i + 1
