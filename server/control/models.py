"""Pydantic models of the control API's request bodies (camelCase on the wire)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class FaultRequest(Model):
    """`POST /_emulator/faults`. Unset fields match anything (or come from `kind`)."""

    kind: str | None = None
    method: str | None = None
    path: str | None = None
    sandbox_id: str | None = Field(default=None, alias="sandboxId")
    port: int | None = None
    times: int | None = 1
    status: int | None = None
    code: str | None = None
    message: str | None = None
    delay_seconds: float | None = Field(default=None, alias="delaySeconds")
    cut_after_events: int | None = Field(default=None, alias="cutAfterEvents")


class AdvanceRequest(Model):
    """`POST /_emulator/clock/advance`."""

    seconds: float
