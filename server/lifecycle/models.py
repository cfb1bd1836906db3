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
    create_if_not_exists: bool = Field(default=True, alias="createIfNotExists")
    delete_on_sandbox_termination: bool = Field(default=False,
                                                alias="deleteOnSandboxTermination")
    # Kubernetes provisioning hints: checked, then not needed by a named volume here.
    storage_class: str | None = Field(default=None, alias="storageClass")
    storage: str | None = Field(default=None, pattern=r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|Pi|Ei)?$")
    access_modes: list[str] | None = Field(default=None, alias="accessModes")


class OssfsBackend(Model):
    """Alibaba Cloud OSS through ossfs: its shape is checked, then refused (no OSS here)."""

    bucket: str = Field(min_length=3, max_length=63)
    endpoint: str = Field(min_length=1)
    version: Literal["1.0", "2.0"] = "2.0"
    options: list[str] | None = None
    access_key_id: str = Field(alias="accessKeyId", min_length=1)
    access_key_secret: str = Field(alias="accessKeySecret", min_length=1)


class VolumeSpec(Model):
    name: str = Field(pattern=DNS_LABEL, max_length=63)
    host: HostBackend | None = None
    pvc: PvcBackend | None = None
    ossfs: OssfsBackend | None = None
    mount_path: Text = Field(alias="mountPath", pattern=r"^/")
    read_only: bool = Field(default=False, alias="readOnly")
    sub_path: Text | None = Field(default=None, alias="subPath")

    @model_validator(mode="after")
    def _one_backend(self) -> VolumeSpec:
        backends = [b for b in (self.host, self.pvc, self.ossfs) if b is not None]
        if len(backends) != 1:
            which = "none was" if not backends else "multiple were"
            raise ValueError(f"Exactly one backend (host, pvc, ossfs) must be specified, but "
                             f"{which} provided.")
        return self


class NetworkRule(Model):
    # "allow" or "deny", any case (upstream's sidecar lower-cases them); checked with the
    # targets in validation.py, where the message can say which rule is wrong.
    action: str | None = None
    target: Text


class NetworkPolicy(Model):
    default_action: str | None = Field(default=None, alias="defaultAction")
    egress: list[NetworkRule] | None = None


class PlatformSpec(Model):
    # Any string here, as upstream's schema; the values are checked (lower-cased) later.
    os: str
    arch: str


class CredentialProxy(Model):
    enabled: bool = False


class CreateSandboxRequest(Model):
    # Exactly one of `image` and `snapshotId` (checked with the rest in validation.py, after
    # `templateId`, which gets its own answer).
    image: ImageSpec | None = None
    snapshot_id: str | None = Field(default=None, alias="snapshotId", min_length=1)
    template_id: str | None = Field(default=None, alias="templateId")
    # None (absent or null, as newer SDKs send) means the sandbox never expires.
    timeout: int | None = None
    resource_limits: dict[str, str] = Field(default_factory=dict, alias="resourceLimits")
    # Required with `image`; from a snapshot it defaults to `tail -f /dev/null`.
    entrypoint: list[Text] | None = Field(default=None, min_length=1)
    env: dict[EnvName, Text | None] | None = None
    metadata: dict[str, str] | None = None
    extensions: dict[str, str] | None = None
    network_policy: NetworkPolicy | None = Field(default=None, alias="networkPolicy")
    credential_proxy: CredentialProxy | None = Field(default=None, alias="credentialProxy")
    platform: PlatformSpec | None = None
    secure_access: bool = Field(default=False, alias="secureAccess")
    volumes: list[VolumeSpec] | None = None


class CreateSnapshotRequest(Model):
    # Unknown fields are ignored, as upstream does (its spec forbids them).
    name: str | None = Field(default=None, min_length=1)


class RenewExpirationRequest(Model):
    expires_at: str = Field(alias="expiresAt", min_length=1)
