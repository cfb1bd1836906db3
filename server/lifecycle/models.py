"""Pydantic models that mirror the Lifecycle API's request bodies.

Unknown fields are ignored (newer SDKs send `secureAccess`, `platform`, …). Strings that
reach the runtime (the image, the entrypoint, the environment, volume paths) are `Text`:
a NUL byte in one is a 400 that names the field. Responses are
built as plain dicts by the service, so that absent values are left out exactly as
upstream leaves them out.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from opensandbox_emulator.server.inputs import EnvName, Text

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class ImageAuth(Model):
    username: Text | None = None
    password: Text | None = None


class ImageSpec(Model):
    uri: Text = Field(min_length=1)
    auth: ImageAuth | None = None


class HostBackend(Model):
    path: Text = Field(pattern=r"^/")


class PvcBackend(Model):
    claim_name: str = Field(alias="claimName", pattern=DNS_LABEL, max_length=253)


class VolumeSpec(Model):
    name: str = Field(pattern=DNS_LABEL, max_length=63)
    host: HostBackend | None = None
    pvc: PvcBackend | None = None
    mount_path: Text = Field(alias="mountPath", pattern=r"^/")
    read_only: bool = Field(default=False, alias="readOnly")
    sub_path: Text | None = Field(default=None, alias="subPath")

    @model_validator(mode="after")
    def _one_backend(self) -> VolumeSpec:
        backends = [b for b in (self.host, self.pvc) if b is not None]
        if len(backends) != 1:
            which = "none was" if not backends else "multiple were"
            raise ValueError(f"Exactly one backend (host, pvc) must be specified, but {which} "
                             "provided.")
        return self


class NetworkRule(Model):
    action: Literal["allow", "deny"]
    target: Text = Field(min_length=1)


class NetworkPolicy(Model):
    default_action: Literal["allow", "deny"] | None = Field(default=None, alias="defaultAction")
    egress: list[NetworkRule] | None = None


class CreateSandboxRequest(Model):
    image: ImageSpec
    # None (absent or null, as newer SDKs send) means the sandbox never expires.
    timeout: int | None = None
    resource_limits: dict[str, str] = Field(default_factory=dict, alias="resourceLimits")
    entrypoint: list[Text] = Field(min_length=1)
    env: dict[EnvName, Text | None] | None = None
    metadata: dict[str, str] | None = None
    extensions: dict[str, str] | None = None
    network_policy: NetworkPolicy | None = Field(default=None, alias="networkPolicy")
    volumes: list[VolumeSpec] | None = None


class RenewExpirationRequest(Model):
    expires_at: str = Field(alias="expiresAt", min_length=1)
