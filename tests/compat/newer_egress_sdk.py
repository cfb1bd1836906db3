"""The newest Python SDK (opensandbox 1.1.x) with an egress policy, as its README shows it:
`network_policy=NetworkPolicy(...)` at create, then `get_egress_policy`,
`patch_egress_rules` and `delete_egress_rules` at run time; and the Credential Vault, which
needs the credential proxy this server does not run. A program in the sandbox fetches each
URL in turn. Prints what it saw as one JSON object for tests/test_egress.py.

    .venv-sdk-next/bin/python tests/compat/newer_egress_sdk.py <domain> <image> \\
        <allowed url> <other url> [--proxy]
"""

import asyncio
import json
import shlex
import sys
from datetime import timedelta

from opensandbox import Sandbox
from opensandbox.config import ConnectionConfig
from opensandbox.exceptions import SandboxException
from opensandbox.models.sandboxes import NetworkPolicy, NetworkRule

FETCH = ("import sys, urllib.request\n"
         "for url in sys.argv[1:]:\n"
         "    try:\n"
         "        print(urllib.request.urlopen(url, timeout=10).read().decode())\n"
         "    except Exception as error:\n"
         "        print('failed', type(error).__name__)\n")


async def fetch(sandbox: Sandbox, *urls: str) -> list[str]:
    execution = await sandbox.commands.run(
        "python3 -c " + shlex.quote(FETCH) + " " + " ".join(map(shlex.quote, urls)))
    return [line.text for line in execution.logs.stdout]


async def main(domain: str, image: str, allowed: str, other: str,
               use_server_proxy: bool) -> dict[str, object]:
    config = ConnectionConfig(domain=domain, use_server_proxy=use_server_proxy,
                              request_timeout=timedelta(seconds=60))
    out: dict[str, object] = {}
    sandbox = await Sandbox.create(
        image,
        connection_config=config,
        timeout=timedelta(minutes=30),
        resource={"cpu": "1", "memory": "1Gi"},
        entrypoint=["tail", "-f", "/dev/null"],
        network_policy=NetworkPolicy(
            defaultAction="deny",
            egress=[NetworkRule(action="allow", target="allowed.test")],
        ),
    )
    try:
        out["first"] = await fetch(sandbox, allowed, other)
        policy = await sandbox.get_egress_policy()
        out["policy"] = policy.model_dump(by_alias=True, exclude_none=True)
        await sandbox.patch_egress_rules(
            [
                NetworkRule(action="allow", target="other.test"),
                NetworkRule(action="deny", target="allowed.test"),
            ]
        )
        out["patched"] = (await sandbox.get_egress_policy()).model_dump(by_alias=True,
                                                                         exclude_none=True)
        out["after_patch"] = await fetch(sandbox, allowed, other)
        await sandbox.delete_egress_rules(["other.test"])
        out["after_delete"] = await fetch(sandbox, allowed, other)
        try:
            await sandbox.credential_vault.get()
            out["vault"] = "answered"
        except SandboxException as error:
            out["vault"] = type(error).__name__ + ": " + str(error)[:200]
    finally:
        await sandbox.kill()
        await sandbox.close()
    # A sandbox without a policy: the SDK still resolves its egress endpoint, and the
    # policy it reads is unrestricted.
    plain = await Sandbox.create(image, connection_config=config,
                                 entrypoint=["tail", "-f", "/dev/null"])
    try:
        out["plain_policy"] = (await plain.get_egress_policy()).model_dump(by_alias=True,
                                                                          exclude_none=True)
    finally:
        await plain.kill()
        await plain.close()
    return out


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    print(json.dumps(asyncio.run(main(*args, use_server_proxy="--proxy" in sys.argv))))
