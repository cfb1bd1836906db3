"""A command's bounded log (`LogBuffer`): what it keeps, what a cursor reads, and how a
reader learns that bytes were dropped; then the same through `GET /command/{id}/logs`.

A cursor is an offset from the first byte the command ever printed, so a reader that polls
with the cursor it was handed back never loses or repeats a byte while it keeps up, and is
told (`truncated`) when it fell behind by more than the buffer holds.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from opensandbox_emulator.server.config import Config
from opensandbox_emulator.server.execd.commands.logbuffer import LogBuffer
from tests.helpers.contract import assert_error
from tests.helpers.in_process import InProcess, eventually, serve_in_process


def test_capacity_must_be_a_byte_at_least() -> None:
    with pytest.raises(ValueError, match="capacity must be at least one byte"):
        LogBuffer(0)


def test_what_fits_is_kept_whole_and_read_from_any_cursor() -> None:
    log = LogBuffer(100, chunk_size=8)
    for piece in (b"hello ", b"world", b"\n", b"second line\n"):
        log.write(piece)
    whole = b"hello world\nsecond line\n"
    assert log.read(0) == (whole, len(whole), False)
    assert log.read(6) == (whole[6:], len(whole), False)
    assert (log.start, log.end, log.held) == (0, len(whole), len(whole))


def test_a_cursor_at_or_past_the_end_reads_nothing_and_is_handed_back() -> None:
    log = LogBuffer(10)
    log.write(b"abc")
    assert log.read(3) == (b"", 3, False)
    assert log.read(50) == (b"", 50, False)


def test_a_negative_cursor_is_refused() -> None:
    with pytest.raises(ValueError, match="cursor must not be negative"):
        LogBuffer(10).read(-1)


def test_only_the_newest_capacity_bytes_are_held() -> None:
    log = LogBuffer(10, chunk_size=4)
    for index in range(26):
        log.write(bytes([ord("a") + index]))
        assert log.held <= 10
    assert (log.start, log.end) == (16, 26)
    assert log.read(0) == (b"qrstuvwxyz", 26, True)  # dropped bytes: starts at the oldest
    assert log.read(16) == (b"qrstuvwxyz", 26, False)  # the oldest kept byte: nothing lost
    assert log.read(20) == (b"uvwxyz", 26, False)


def test_one_write_larger_than_the_buffer_keeps_its_tail() -> None:
    log = LogBuffer(8)
    log.write(b"old")
    log.write(b"0123456789abcdef")
    assert (log.start, log.end, log.held) == (11, 19, 8)
    assert log.read(0) == (b"89abcdef", 19, True)


def test_compact_seals_the_tail_without_changing_what_is_read() -> None:
    log = LogBuffer(1000, chunk_size=64)
    log.write(b"x" * 100 + b"tail")
    before = log.read(0)
    log.compact()
    assert log.read(0) == before
    log.write(b"+more")
    assert log.read(100) == (b"tail+more", 109, False)


def test_a_reader_that_keeps_up_sees_every_byte_once() -> None:
    """Writes of random sizes (some larger than the buffer's chunks), read after each
    write with the cursor handed back: the reads put together are the output exactly."""
    rng = random.Random(7)
    log = LogBuffer(4096, chunk_size=256)
    written, read, cursor = bytearray(), bytearray(), 0
    for _ in range(500):
        piece = rng.randbytes(rng.randint(0, 600))
        log.write(piece)
        written += piece
        data, cursor, truncated = log.read(cursor)
        assert not truncated
        read += data
        assert log.held <= 4096
    assert bytes(read) == bytes(written) and cursor == len(written)


def test_a_reader_that_falls_behind_is_told_and_resumes_at_the_oldest_byte() -> None:
    log = LogBuffer(1000, chunk_size=100)
    output = b"".join(b"line %04d\n" % number for number in range(500))
    for start in range(0, len(output), 37):
        log.write(output[start:start + 37])
    data, cursor, truncated = log.read(0)
    assert truncated and cursor == len(output)
    assert data == output[-1000:]
    assert log.start == len(output) - 1000


def test_any_cursor_reads_what_a_plain_copy_of_the_newest_bytes_holds() -> None:
    """Writes of every size against a model that keeps the newest `capacity` bytes of a
    bytearray: chunks dropped in part and whole, and compaction, never change a read."""
    rng = random.Random(13)
    for capacity, chunk_size in ((64, 16), (1000, 100), (4096, 256)):
        log = LogBuffer(capacity, chunk_size=chunk_size)
        written = bytearray()
        for step in range(400):
            piece = rng.randbytes(rng.choice((0, 1, 7, chunk_size - 1, chunk_size,
                                              chunk_size * 3, capacity - 1, capacity + 5)))
            log.write(piece)
            written += piece
            if step % 97 == 96:
                log.compact()
            start = max(len(written) - capacity, 0)
            assert (log.start, log.end) == (start, len(written))
            cursor = rng.randint(0, len(written) + 2)
            data, next_cursor, truncated = log.read(cursor)
            if cursor >= len(written):
                assert (data, next_cursor, truncated) == (b"", cursor, False)
            else:
                assert data == bytes(written[max(cursor, start):])
                assert (next_cursor, truncated) == (len(written), cursor < start)


# --- through execd, in this process ------------------------------------------------------


@pytest.mark.anyio
async def test_logs_of_a_command_that_printed_more_than_the_buffer(tmp_path: Path) -> None:
    """`[execd] log_buffer_bytes = 1000`: a background command prints about 8.9 KB; its log
    answers the newest 1,000 bytes, says it was truncated and from which byte it starts,
    and the tail cursor counts every byte the command printed."""
    config = Config().replace("execd", log_buffer_bytes=1000)
    async with serve_in_process(tmp_path, config) as emulator:
        sandbox_id = await emulator.new_sandbox()
        execd = emulator.execd(sandbox_id)
        started = await emulator.client.post(f"{execd}/command", json={
            "command": "seq 1 2000", "background": True})
        assert started.status_code == 200, started.text
        command_id = json.loads(started.text.split("\n\n")[0])["text"]
        assert command_id == emulator.ids.issued[-1]

        async def finished() -> bool:
            status = await emulator.client.get(f"{execd}/command/status/{command_id}")
            return status.json()["running"] is False

        await eventually(finished, "seq to finish")
        printed = "".join(f"{number}\n" for number in range(1, 2001)).encode()
        logs = await emulator.client.get(f"{execd}/command/{command_id}/logs",
                                         params={"cursor": 0})
        assert logs.status_code == 200
        assert logs.content == printed[-1000:]
        assert logs.headers["EXECD-COMMANDS-TAIL-CURSOR"] == str(len(printed))
        assert logs.headers["EXECD-COMMANDS-LOG-TRUNCATED"] == "true"
        assert logs.headers["EXECD-COMMANDS-LOG-START"] == str(len(printed) - 1000)

        caught_up = await emulator.client.get(f"{execd}/command/{command_id}/logs",
                                              params={"cursor": len(printed)})
        assert caught_up.content == b""
        assert "EXECD-COMMANDS-LOG-TRUNCATED" not in caught_up.headers
        assert caught_up.headers["EXECD-COMMANDS-TAIL-CURSOR"] == str(len(printed))


@pytest.mark.anyio
async def test_a_cursor_that_is_not_an_offset_is_refused(emulator: InProcess) -> None:
    execd = emulator.execd(await emulator.new_sandbox())
    started = await emulator.client.post(f"{execd}/command",
                                         json={"command": "true", "background": True})
    command_id = json.loads(started.text.split("\n\n")[0])["text"]
    for cursor in ("-1", "ten"):
        response = await emulator.client.get(f"{execd}/command/{command_id}/logs",
                                             params={"cursor": cursor})
        assert_error(response, 400, "INVALID_REQUEST_BODY",
                     f"cursor must be a byte offset (an integer >= 0), got '{cursor}'")
