"""Files offered to every fake sandbox: what an image would have carried, read-only.

The fake runtime runs the host's system whatever image a sandbox names, so files that
programs expect in their documented image (the code-interpreter image's entrypoint, say)
are given to it by whoever builds the runtime, as sandbox path -> a host file. At start-up
the runtime copies each into its state directory, executable and read-only, so that what a
sandbox runs does not depend on how that file was installed, and every sandbox it creates
sees the copies bound read-only at their paths. A sandbox without isolation sees the
host's own tree instead: a process started as an offered path runs its copy there.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass

from opensandbox_emulator.runtimes.fake.layout import Mount

DIRECTORY = "offered"


@dataclass(frozen=True)
class OfferedFiles:
    mounts: tuple[Mount, ...] = ()

    @classmethod
    def stage(cls, state_dir: str, sources: Mapping[str, str]) -> OfferedFiles:
        """Copy `sources` (sandbox path -> host file) under `state_dir` (blocking)."""
        directory = os.path.join(state_dir, DIRECTORY)
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory, 0o755)
        mounts = []
        for index, (sandbox_path, source) in enumerate(sorted(sources.items())):
            copy = os.path.join(directory, f"{index}-{os.path.basename(sandbox_path)}")
            shutil.copyfile(source, copy)
            os.chmod(copy, 0o555)
            mounts.append(Mount(sandbox_path, copy, read_only=True))
        return cls(tuple(mounts))

    def host_copy(self, sandbox_path: str) -> str | None:
        """The copy of the file offered at `sandbox_path`, if one is."""
        for mount in self.mounts:
            if mount.sandbox_path == sandbox_path:
                return mount.host_path
        return None
