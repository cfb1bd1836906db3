"""The framing of command output: the block-at-once way gives exactly the events of the
line-by-line way, however the output is cut into chunks, in C and in Python alike."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable, Iterator

import pytest

from opensandbox_emulator.server.execd import events
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
PLAIN = [b"x", b"hello world", b"", b"\n", b"\n\n", b"~ printable ASCII !#$%&'()*+,-./", b"a\nb"]


def c_framing() -> Callable[..., bytes | None]:
    try:
        from opensandbox_emulator.server.execd._framing import frame_plain_lines
    except ImportError:
        pytest.skip("the C framing was not built (no compiler when the package was installed)")
    return frame_plain_lines


@pytest.fixture(params=["c", "python"])
def framing(request: pytest.FixtureRequest,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., bytes | None]]:
    """Each test runs with the C framing and with the Python one in `encode_text_lines`."""
    chosen = c_framing() if request.param == "c" else events._frame_plain_lines
    monkeypatch.setattr(events, "frame_plain_lines", chosen)
    yield chosen


def test_the_c_framing_is_built_where_a_compiler_is() -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler here")
    assert events.frame_plain_lines is c_framing()


@pytest.mark.parametrize("block", SAMPLES)
def test_a_block_frames_as_its_lines_do(framing: Callable[..., bytes | None],
                                        block: bytes) -> None:
    assert encode_text_lines("stdout", block, 7) == \
        encode_text_events("stdout", block.splitlines(), 7)


@pytest.mark.parametrize("held", [b"", b"he", b"x\n", b"a\n\nb", b"\n"])
@pytest.mark.parametrize("block", SAMPLES)
def test_held_bytes_begin_the_first_line(framing: Callable[..., bytes | None], held: bytes,
                                         block: bytes) -> None:
    for end in range(len(block) + 1):
        assert encode_text_lines("stderr", block, 9, held=held, end=end) == \
            encode_text_events("stderr", (held + block[:end]).splitlines(), 9)


def test_c_and_python_agree_on_plain_text() -> None:
    in_c = c_framing()
    rng = random.Random(11)
    head, tail = b'{"type":"stdout","text":"', b'","timestamp":1}\n\n'
    for _ in range(3000):
        held = b"".join(rng.choice(PLAIN) for _ in range(rng.randint(0, 3)))
        block = b"".join(rng.choice(PLAIN) for _ in range(rng.randint(0, 8)))
        end = rng.randint(0, len(block))
        framed = in_c(head, tail, held, block, end)
        assert framed == events._frame_plain_lines(head, tail, held, block, end)
        assert framed == encode_text_events("stdout", (held + block[:end]).splitlines(), 1)


def test_c_framing_of_large_blocks() -> None:
    """Blocks long enough for every path of the vectorised check: many rounds of 32 bytes,
    a count that restarts every 255 rounds, a rest shorter than a round."""
    in_c = c_framing()
    rng = random.Random(3)
    head, tail = b'{"type":"stdout","text":"', b'","timestamp":1}\n\n'
    for _ in range(60):
        block = bytes(rng.choices(b"ab ~\n", weights=[30, 30, 10, 1, rng.randint(1, 20)],
                                  k=rng.randint(0, 40_000)))
        end = rng.randint(0, len(block))
        assert in_c(head, tail, b"x", block, end) == \
            encode_text_events("stdout", (b"x" + block[:end]).splitlines(), 1)
        if block:
            at = rng.randrange(len(block))
            careful = bytes([rng.choice(b'"\\\x00\x1f\x7f\x80\xff\r\t')])
            spoilt = block[:at] + careful + block[at + 1:]
            assert in_c(head, tail, b"", spoilt, len(spoilt)) is None


def test_text_that_needs_escaping_is_left_to_the_caller(
        framing: Callable[..., bytes | None]) -> None:
    for sample in (b'say "hi"\n', b"back\\slash", b"tab\t", b"\xc3\xa9\n", b"cr\r\n", b"\x7f"):
        assert framing(b"h", b"t", b"", sample, len(sample)) is None
        assert framing(b"h", b"t", sample, b"plain\n", 6) is None
        assert framing(b"h", b"t", b"", b"plain\n" + sample, 6) == b"hplaint"


def test_an_end_outside_the_block_is_refused() -> None:
    in_c = c_framing()
    with pytest.raises(ValueError):
        in_c(b"h", b"t", b"", b"abc", 4)
    with pytest.raises(ValueError):
        in_c(b"h", b"t", b"", b"abc", -1)
    with pytest.raises(TypeError):
        in_c(b"h", b"t", "text", b"abc", 1)


def test_chunks_cut_anywhere_give_the_lines_of_the_whole(
        framing: Callable[..., bytes | None]) -> None:
    rng = random.Random(5)
    output = b"".join(rng.choice(SAMPLES) for _ in range(400)) + b"tail without end"
    expected = [line.decode("utf-8", "replace") for line in output.splitlines() if line]
    for _ in range(50):
        splitter = LineSplitter()
        frames = b""
        position = 0
        while position < len(output):
            size = rng.randint(1, 300)
            held, chunk, end = splitter.feed(output[position:position + size])
            frames += encode_text_lines("stdout", chunk, 1, held=held, end=end)
            position += size
        frames += encode_text_events("stdout", [splitter.flush()], 1)
        assert [json.loads(line)["text"] for line in frames.split(b"\n\n") if line] == expected


def test_a_line_longer_than_the_limit_goes_out_in_pieces() -> None:
    splitter = LineSplitter(limit=10)
    assert splitter.feed(b"ok\n" + b"x" * 25) == (b"", b"ok\n" + b"x" * 25, 28)
    assert splitter.feed(b"yy") == (b"", b"", 0)
    assert splitter.feed(b"z" * 9) == (b"yy", b"z" * 9, 9)
    assert splitter.feed(b"w\n") == (b"", b"w\n", 2)
    assert splitter.flush() == b""
