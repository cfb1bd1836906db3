"""Search patterns (`compile_glob`): doublestar-style globs matched against base names, and
`GET /files/search`, which refuses a malformed one with a message that says what is wrong.
"""

from __future__ import annotations

import pytest

from opensandbox_emulator.server.execd.files.globs import BadPattern, compile_glob
from tests.helpers.contract import assert_error
from tests.helpers.in_process import InProcess

MATCHES = [
    ("*.py", ["a.py", ".py", "x.y.py"], ["a.pyc", "a.PY", "py"]),
    ("**", ["anything", "", ".hidden"], []),
    ("**.log", ["app.log", "x.log"], ["app.log.1"]),
    ("?.txt", ["a.txt", "..txt"], ["ab.txt", ".txt"]),
    ("data[0-9].csv", ["data0.csv", "data9.csv"], ["dataa.csv", "data10.csv"]),
    ("[abc]*", ["apple", "cherry"], ["date", "Apple"]),
    ("[!abc]*", ["date", "Apple"], ["apple"]),
    ("[^abc]*", ["date"], ["banana"]),
    ("*.{js,ts}", ["a.js", "b.ts"], ["c.jsx", "d.py"]),
    ("{src,test{s,}}_*", ["src_a", "tests_b", "test_c"], ["tes_d", "srcs_e"]),
    ("a.c", ["a.c"], ["abc"]),  # `.` is a plain character, not a regex wildcard
    ("\\*literal", ["*literal"], ["xliteral"]),
    ("[\\]]x", ["]x"], ["x"]),
    ("a+b(c)", ["a+b(c)"], ["aab(c)", "abc"]),
    ("dir/*.py", [], ["a.py", "dir", "dira.py"]),  # base names have no "/": never matches
    ("*", ["a\nb"], []),
]


@pytest.mark.parametrize(("pattern", "hits", "misses"), MATCHES,
                         ids=[case[0] for case in MATCHES])
def test_a_pattern_matches_base_names(pattern: str, hits: list[str], misses: list[str]) -> None:
    match = compile_glob(pattern)
    assert [name for name in hits if not match(name)] == []
    assert [name for name in misses if match(name)] == []


BAD = [
    ("[abc", "has a '[' without its ']'"),
    ("[]", "has a '[' without its ']'"),
    ("{a,b", "has a '{' without its '}'"),
    ("*.{js,{ts}", "has a '{' without its '}'"),
    ("trailing\\", "ends with a lone '\\'"),
    ("[a\\", "ends with a lone '\\'"),
    ("[z-a]", "has a backwards range z-a"),
]


@pytest.mark.parametrize(("pattern", "why"), BAD, ids=[case[0] for case in BAD])
def test_a_malformed_pattern_is_refused_saying_why(pattern: str, why: str) -> None:
    with pytest.raises(BadPattern) as refused:
        compile_glob(pattern)
    assert str(refused.value) == f"pattern {pattern!r} {why}"


@pytest.mark.anyio
async def test_search_finds_by_pattern_and_refuses_a_malformed_one(emulator: InProcess) -> None:
    sandbox_id = await emulator.new_sandbox()
    for path in ("/workspace/app/main.py", "/workspace/app/util.py", "/workspace/app/notes.md",
                 "/workspace/app/lib/deep.py", "/workspace/app/lib/data.json"):
        uploaded = await emulator.upload(sandbox_id, path, b"x")
        assert uploaded.status_code == 200, uploaded.text
    search = f"{emulator.execd(sandbox_id)}/files/search"

    async def found(pattern: str) -> list[str]:
        response = await emulator.client.get(search, params={"path": "/workspace/app",
                                                             "pattern": pattern})
        assert response.status_code == 200, response.text
        return sorted(entry["path"] for entry in response.json())

    assert await found("*.py") == ["/workspace/app/lib/deep.py", "/workspace/app/main.py",
                                   "/workspace/app/util.py"]
    assert await found("{notes.md,data.*}") == ["/workspace/app/lib/data.json",
                                                "/workspace/app/notes.md"]
    assert await found("[!a-m]*") == ["/workspace/app/notes.md", "/workspace/app/util.py"]
    refused = await emulator.client.get(search, params={"path": "/workspace/app",
                                                        "pattern": "*.{py"})
    assert_error(refused, 400, "INVALID_PATTERN",
                 "invalid search pattern: pattern '*.{py' has a '{' without its '}'")
