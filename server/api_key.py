"""Where the API key comes from, so that it need not sit on a command line.

In order of precedence: `--api-key` (kept working, with a warning: every local user can
read a process's arguments), the `OPENSANDBOX_API_KEY` environment variable, the first
line of `[server] api_key_file`, and `[server] api_key` in the config file. A blank key
means no authentication, as upstream.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping

from opensandbox_emulator.server.config import Config, ConfigError

ENV_VAR = "OPENSANDBOX_API_KEY"
FLAG_WARNING = ("--api-key puts the key on the command line, where every local process can "
                "read it (ps, /proc/<pid>/cmdline); set OPENSANDBOX_API_KEY or "
                "[server] api_key_file instead.")


def read_key_file(path: str) -> tuple[str, list[str]]:
    """The key in `path` (its first line, stripped) and any warnings about the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            first = handle.readline()
            info = os.fstat(handle.fileno())
    except OSError as error:
        raise ConfigError(f"server.api_key_file: cannot read {path}: "
                          f"{error.strerror or error}") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"server.api_key_file: {path} is not UTF-8 text") from error
    key = first.strip()
    if not key:
        raise ConfigError(f"server.api_key_file: {path} is empty; write the key on its first "
                          "line (or leave api_key_file out for no authentication)")
    warnings = []
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.append(f"the API key file {path} can be read by other users "
                        f"(mode {stat.S_IMODE(info.st_mode):o}); chmod 600 it")
    return key, warnings


def with_api_key(config: Config, *, flag: str | None,
                 environ: Mapping[str, str] = os.environ) -> tuple[Config, list[str]]:
    """`config` with its effective `[server] api_key`, and warnings to print."""
    if flag is not None:
        return config.replace("server", api_key=flag), [FLAG_WARNING]
    from_env = environ.get(ENV_VAR)
    if from_env is not None and from_env.strip():
        return config.replace("server", api_key=from_env.strip()), []
    if config.server.api_key_file:
        key, warnings = read_key_file(config.server.api_key_file)
        return config.replace("server", api_key=key), warnings
    return config, []
