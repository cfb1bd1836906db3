"""Account names (`AccountNames`): the users and groups of a sandbox, read from the text of
its own /etc/passwd and /etc/group. Files show their owner by those names (the number when
the sandbox has no name for it), and a chown by name resolves inside the sandbox, refusing
a name the sandbox does not know.
"""

from __future__ import annotations

import grp
import pwd

import pytest

from opensandbox_emulator.runtimes.filesystem import AccountNames
from tests.helpers.contract import assert_error
from tests.helpers.in_process import InProcess

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
# a comment line is not an account
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1000::/home/app:/bin/sh
alias:x:1000:1000:a second name for uid 1000:/home/app:/bin/sh
broken line without fields
nouid:x:notanumber:0::/:/bin/sh
1234:x:5:5:a name made of digits:/:/bin/sh
"""
GROUP = """\
root:x:0:
staff:x:50:app
app:x:1000:
app:x:2000:
"""


@pytest.fixture
def names() -> AccountNames:
    return AccountNames.parse(PASSWD, GROUP)


def test_ids_are_shown_by_the_sandbox_names(names: AccountNames) -> None:
    assert [names.user(uid) for uid in (0, 1, 1000, 5)] == ["root", "daemon", "app", "1234"]
    assert [names.group(gid) for gid in (0, 50, 1000)] == ["root", "staff", "app"]


def test_an_id_without_a_name_is_shown_as_its_number(names: AccountNames) -> None:
    assert names.user(4242) == "4242"
    assert names.group(4242) == "4242"
    assert names.user(2) == "2"  # `nouid` has no numeric uid: it names nobody


def test_the_first_entry_wins_for_an_id_and_for_a_name(names: AccountNames) -> None:
    assert names.user(1000) == "app"  # not `alias`, listed after it
    assert names.uid("alias") == 1000  # yet `alias` still resolves
    assert names.gid("app") == 1000  # not the later `app` group, 2000
    assert names.group(2000) == "app"  # which still names its own gid


def test_comments_and_malformed_lines_are_skipped(names: AccountNames) -> None:
    assert set(names.uids) == {"root", "daemon", "app", "alias", "1234"}
    assert set(names.gids) == {"root", "staff", "app"}


def test_names_resolve_for_a_chown_and_digits_are_ids(names: AccountNames) -> None:
    assert (names.uid("app"), names.gid("staff")) == (1000, 50)
    assert (names.uid("4242"), names.gid("4242")) == (4242, 4242)
    assert names.uid("1234") == 5  # a user named with digits is that user, not uid 1234
    assert (names.uid(None), names.uid(""), names.gid(None)) == (-1, -1, -1)  # leave as is


def test_an_unknown_name_is_refused_naming_it(names: AccountNames) -> None:
    with pytest.raises(Exception, match=r"^user 'ghost' does not exist in the sandbox"):
        names.uid("ghost")
    with pytest.raises(Exception, match=r"^group 'ghosts' does not exist in the sandbox"):
        names.gid("ghosts")
    with pytest.raises(Exception, match="user 'daemon2'"):
        names.uid("daemon2")


def test_a_sandbox_without_account_files_shows_numbers() -> None:
    empty = AccountNames.parse("", "")
    assert (empty.user(0), empty.group(0)) == ("0", "0")
    assert empty.uid("0") == 0
    with pytest.raises(Exception, match="user 'root' does not exist"):
        empty.uid("root")


# --- through execd, in this process ------------------------------------------------------


def unnamed_id(known: set[int]) -> int:
    return next(candidate for candidate in range(54321, 60000) if candidate not in known)


@pytest.mark.anyio
async def test_file_owners_by_the_names_of_the_sandbox(emulator: InProcess) -> None:
    """A fake sandbox's own /etc lists this host's system accounts: nobody is one. A file
    given to a named user and an unnamed group shows that name and that number; a chown to
    a name the sandbox lacks is refused and leaves the file as it was."""
    assert pwd.getpwnam("nobody").pw_uid != 0  # a name that is not root's to show
    gid = unnamed_id({entry.gr_gid for entry in grp.getgrall()})
    sandbox_id = await emulator.new_sandbox()
    uploaded = await emulator.upload(sandbox_id, "/workspace/owned.txt", b"mine",
                                     owner="nobody", group=str(gid), mode=640)
    assert uploaded.status_code == 200, uploaded.text
    execd = emulator.execd(sandbox_id)

    async def info() -> dict[str, object]:
        response = await emulator.client.get(f"{execd}/files/info",
                                             params={"path": "/workspace/owned.txt"})
        assert response.status_code == 200, response.text
        return dict(response.json()["/workspace/owned.txt"])

    shown = await info()
    assert (shown["owner"], shown["group"], shown["mode"]) == ("nobody", str(gid), 640)

    refused = await emulator.client.post(f"{execd}/files/permissions", json={
        "/workspace/owned.txt": {"owner": "no-such-user-here", "mode": 600}})
    assert_error(refused, 400, "UNKNOWN_USER",
                 "user 'no-such-user-here' does not exist in the sandbox")
    assert await info() == shown
