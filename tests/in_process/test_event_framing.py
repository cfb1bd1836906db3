"""The framing of command output: the block-at-once way gives exactly the events of the
line-by-line way, however the output is cut into chunks."""

from __future__ import annotations

import json
import random

import pytest

from opensandbox_emulator.server.execd.commands.runner import LineSplitter
from opensandbox_emulator.server.execd.events import encode_text_events, encode_text_lines

SAMPLES = [
    b"hi\n",
    b"a\nb\nc\n",
    b"no end",
    b"\n\nlead\n",
    b"mid\n\nempty\n",
    b"crlf\r\nline\r\n",
    b"cr\ronly\r",
    b'quote " and \\ backslash\n',
    b"tab\there\n",
    "ünïcode ✓\n".encode(),
    b"bad utf-8 \xff\xfe\n",
    b"nul \x00 byte\n",
    b"\n",
    b"",
]


@pytest.mark.parametrize("block", SAMPLES)
def test_a_block_frames_as_its_lines_do(block: bytes) -> None:
    assert encode_text_lines("stdout", block, 7) == \
        encode_text_events("stdout", block.splitlines(), 7)


def events(frames: bytes) -> list[dict]:
    return [json.loads(line) for line in frames.split(b"\n\n") if line]


def test_chunks_cut_anywhere_give_the_lines_of_the_whole() -> None:
    rng = random.Random(5)
    output = b"".join(rng.choice(SAMPLES) for _ in range(400)) + b"tail without end"
    expected = [line.decode("utf-8", "replace") for line in output.splitlines() if line]
    for _ in range(50):
        splitter = LineSplitter()
        frames = b""
        position = 0
        while position < len(output):
            size = rng.randint(1, 300)
            frames += encode_text_lines("stdout", splitter.feed(output[position:position + size]),
                                        1)
            position += size
        frames += encode_text_events("stdout", [splitter.flush()], 1)
        assert [event["text"] for event in events(frames)] == expected


def test_a_line_longer_than_the_limit_goes_out_in_pieces() -> None:
    splitter = LineSplitter(limit=10)
    assert splitter.feed(b"ok\n" + b"x" * 25) == b"ok\n" + b"x" * 25
    assert splitter.feed(b"yy") == b""
    assert splitter.flush() == b"yy"
