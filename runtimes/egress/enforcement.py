"""Enforcing a sandbox's egress policy: its nftables rules and its DNS forwarder, kept in step.

`EgressEnforcer` is a runtime's (one per server): the settings, and the thread that enters
namespaces. `attach` starts enforcement in one sandbox's network namespace and returns its
`SandboxEgress`, which applies a policy (`apply`, at once for new connections and queries),
allows the addresses of names the forwarder resolved (`learn`) and ends it all (`close`).

What a sandbox already learned survives a policy change as long as the name it was learned
for is still allowed: a program that resolved a name once and reconnects later keeps
working, and one whose name is now denied is refused at its next connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any

from opensandbox_emulator.runtimes.egress import nftables
from opensandbox_emulator.runtimes.egress.namespaces import (
    NamespaceError,
    NamespaceWorker,
    open_namespace,
)
from opensandbox_emulator.runtimes.egress.policy import ALLOW, EgressPolicy
from opensandbox_emulator.runtimes.egress.resolvers import Upstream, system_upstreams
from opensandbox_emulator.runtimes.failures import EgressFailed

MAX_LEARNED = 4096  # addresses remembered per sandbox (nftables keeps its own timeouts)


@dataclass(frozen=True)
class EgressSettings:
    """`mode`: `dns+nft` (names and addresses) or `dns` (names only, as upstream's default:
    connections to literal addresses pass). `upstreams`: the resolvers the forwarder asks;
    empty means the host's (`/etc/resolv.conf`)."""

    mode: str = nftables.DNS_NFT
    upstreams: tuple[Upstream, ...] = ()

    @property
    def resolvers(self) -> list[Upstream]:
        return list(self.upstreams) or system_upstreams()


@dataclass
class _Learned:
    expires: float  # monotonic
    names: set[str] = field(default_factory=set)


class EgressEnforcer:
    def __init__(self, settings: EgressSettings | None = None):
        self.settings = settings or EgressSettings()
        self.worker = NamespaceWorker()

    def problem(self) -> str | None:
        """None when this server can enforce policies, else why it cannot."""
        return self.worker.problem()

    def health(self, problem: str | None, how: str) -> dict[str, Any]:
        """What `/health` says: whether policies are enforced (or why not), how, in which
        mode, and which resolvers the forwarder asks."""
        enforced: dict[str, Any] = ({"enforced": False, "reason": problem} if problem
                                    else {"enforced": True})
        return {**enforced, "how": how, "mode": self.settings.mode,
                "dnsUpstream": [f"{host}:{port}" for host, port in self.settings.resolvers]}

    async def attach(self, namespace_path: str, policy: EgressPolicy) -> SandboxEgress:
        """Enforce `policy` in the network namespace at `namespace_path` from now on: the
        DNS forwarder listens, then the rules are installed. Raises `EgressFailed`."""
        try:
            namespace = open_namespace(namespace_path)
        except NamespaceError as error:
            raise EgressFailed(str(error)) from None
        egress = SandboxEgress(self, namespace, policy)
        try:
            await egress.start()
            await egress.apply(policy)
        except BaseException:
            await egress.close()
            raise
        return egress

    def close(self) -> None:
        self.worker.close()


class SandboxEgress:
    def __init__(self, enforcer: EgressEnforcer, namespace: int, policy: EgressPolicy):
        self.enforcer = enforcer
        self.namespace = namespace
        self.policy = policy
        self.forwarder: Any = None  # the DnsForwarder (dnspython is loaded with it)
        self._lock = asyncio.Lock()
        self._learned: dict[str, _Learned] = {}

    @property
    def mode(self) -> str:
        return self.enforcer.settings.mode

    async def start(self) -> None:
        from opensandbox_emulator.runtimes.egress.dns import DnsForwarder

        try:
            udp, tcp = await self.enforcer.worker.dns_sockets(self.namespace, nftables.DNS_PORT)
        except NamespaceError as error:
            raise EgressFailed(str(error)) from None
        self.forwarder = DnsForwarder(udp=udp, tcp=tcp, upstreams=self.enforcer.settings.resolvers,
                                      decide=lambda name: self.policy.decide_name(name),
                                      learn=self.learn)
        await self.forwarder.start()

    async def apply(self, policy: EgressPolicy) -> None:
        """Enforce `policy` instead of the current one, for new connections and queries.
        The current one stays if the rules cannot be installed (`EgressFailed`)."""
        async with self._lock:
            now = time.monotonic()
            kept = {address: entry for address, entry in self._learned.items()
                    if entry.expires > now and self._learns(policy)
                    and any(policy.decide_name(name) == ALLOW for name in entry.names)}
            script = nftables.ruleset(policy, self.mode, [
                (address, int(entry.expires - now)) for address, entry in kept.items()])
            await self._nft(script)
            self.policy = policy
            self._learned = kept

    async def learn(self, name: str, answers: list[tuple[str, int]]) -> None:
        """Allow the addresses a DNS answer for `name` gave, each for its TTL (clamped),
        if the name is still allowed once it is our turn."""
        async with self._lock:
            if not self._learns(self.policy) or self.policy.decide_name(name) != ALLOW:
                return
            now = time.monotonic()
            due = []
            for address, ttl in answers:
                seconds = nftables.learned_seconds(ttl)
                entry = self._learned.get(address)
                if entry is None:
                    if len(self._learned) >= MAX_LEARNED:
                        self._forget_expired(now)
                    entry = _Learned(0.0)
                    if len(self._learned) < MAX_LEARNED:
                        self._learned[address] = entry
                entry.names.add(name)
                if entry.expires - now < seconds / 2:  # else nftables has it for long enough
                    entry.expires = now + seconds
                    due.append((address, seconds))
            if due:
                await self._nft(nftables.learn(due))

    def _learns(self, policy: EgressPolicy) -> bool:
        """Whether learned addresses matter: only when addresses are filtered and the
        default refuses them."""
        return self.mode == nftables.DNS_NFT and policy.default_action != ALLOW

    def _forget_expired(self, now: float) -> None:
        for address in [a for a, entry in self._learned.items() if entry.expires <= now]:
            del self._learned[address]

    async def _nft(self, script: str) -> None:
        try:
            await self.enforcer.worker.nft(self.namespace, script)
        except NamespaceError as error:
            raise EgressFailed(str(error)) from None

    async def close(self, *, remove_rules: bool = False) -> None:
        """Stop the forwarder and let the namespace go. The rules stay in the namespace
        (they die with it) unless `remove_rules`: a sandbox that outlives the server keeps
        refusing what its policy refuses, and its names do not resolve until a server
        takes it back."""
        if self.forwarder is not None:
            await self.forwarder.close()
            self.forwarder = None
        if remove_rules:
            with contextlib.suppress(EgressFailed):
                await self._nft(nftables.removal())
        if self.namespace >= 0:
            with contextlib.suppress(OSError):
                os.close(self.namespace)
            self.namespace = -1
