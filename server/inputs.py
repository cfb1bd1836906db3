"""Checks on the text clients send, shared by both APIs' request models.

Whatever reaches the operating system (a path, an argument, a working directory, an
environment variable) cannot hold a NUL byte, and an environment variable's name cannot
be empty or hold `=`. The kernel would refuse them deep inside a runtime; checked here,
at the boundary, they are a 400 that names the field, like any other invalid value.

Use the annotated types in pydantic models and route parameters: `Text` (a string with no
NUL), `StrictText` (the same, refusing non-strings) and `EnvName`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, StrictStr

NUL = "\x00"


def no_nul(value: str) -> str:
    if NUL in value:
        raise ValueError("must not contain a NUL byte (\\u0000): paths, arguments and the "
                         "environment cannot hold one")
    return value


def env_name(value: str) -> str:
    no_nul(value)
    if not value:
        raise ValueError("an environment variable name must not be empty")
    if "=" in value:
        raise ValueError(f"an environment variable name cannot contain '=' (got {value!r}); "
                         "put the value on the right-hand side")
    return value


Text = Annotated[str, AfterValidator(no_nul)]
StrictText = Annotated[StrictStr, AfterValidator(no_nul)]
EnvName = Annotated[StrictStr, AfterValidator(env_name)]
