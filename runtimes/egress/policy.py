"""A sandbox's egress policy: the rules, how a name or an address is decided, and how the
policy API changes them. Pure: no I/O, shared by both runtimes and the server.

The model is upstream's sidecar's (`{"defaultAction", "egress": [{"action", "target"}]}`):
actions and targets are trimmed and lower-cased, a missing `defaultAction` or rule action
is `deny`, and a target is an IP address, a CIDR block, or a domain name: exact
(`example.com`) or a wildcard (`*.example.com`, which matches names at any depth below
`example.com` but not `example.com` itself). Rules are evaluated in list order and the first
that matches wins; none matching leaves `defaultAction`. Domain rules decide DNS queries,
IP and CIDR rules decide connections, each kind in its own order.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

ALLOW = "allow"
DENY = "deny"
MAX_RULES = 4096  # upstream's default limit after a merge
# A domain target: labels of letters, digits, '-' and '_' (service names), optionally
# behind a leading `*.`; a trailing dot is dropped first.
DOMAIN = re.compile(r"^(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)"
                    r"(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*\Z")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class PolicyError(ValueError):
    """A policy or a rule that cannot be used; the message says which and why."""


class TooManyRules(PolicyError):
    """More rules than a policy may hold."""


@dataclass(frozen=True)
class Rule:
    action: str
    target: str

    @property
    def network(self) -> Network | None:
        """The addresses an IP or CIDR target covers; None for a domain."""
        try:
            return ipaddress.ip_network(self.target, strict=False)
        except ValueError:
            return None

    def matches_name(self, name: str) -> bool:
        if self.target.startswith("*."):
            return name.endswith(self.target[1:])
        return name == self.target

    def document(self) -> dict[str, str]:
        return {"action": self.action, "target": self.target}


@dataclass(frozen=True)
class EgressPolicy:
    default_action: str
    rules: tuple[Rule, ...] = ()

    # --- reading a policy ------------------------------------------------------------------

    @classmethod
    def unrestricted(cls) -> EgressPolicy:
        """What a sandbox created without `networkPolicy` has."""
        return cls(ALLOW)

    @classmethod
    def from_document(cls, document: Any) -> EgressPolicy:
        """Parse a `NetworkPolicy` object as upstream's sidecar does: nothing (None, `{}`,
        an empty string) is deny-all. Raises `PolicyError`."""
        if document is None or document == "" or document == {}:
            return cls(DENY)
        if not isinstance(document, dict):
            raise PolicyError("A network policy must be a JSON object with defaultAction "
                              "and egress.")
        default = _action(document.get("defaultAction"), "defaultAction")
        egress = document.get("egress")
        if egress is None:
            egress = []
        if not isinstance(egress, list):
            raise PolicyError("egress must be a list of {action, target} rules.")
        return cls(default, tuple(rules_from_document(egress, "egress")))._checked()

    def _checked(self) -> EgressPolicy:
        if MAX_RULES and len(self.rules) > MAX_RULES:
            raise TooManyRules(f"A policy may hold at most {MAX_RULES} rules (this one would "
                               f"hold {len(self.rules)}).")
        return self

    def document(self) -> dict[str, Any]:
        """The policy as `GET /policy` shows it: `egress` is always a list, never null."""
        return {"defaultAction": self.default_action,
                "egress": [rule.document() for rule in self.rules]}

    @property
    def mode(self) -> str:
        """Upstream's word for it: `allow_all`, `deny_all` (no rules) or `enforcing`."""
        if self.rules:
            return "enforcing"
        return "allow_all" if self.default_action == ALLOW else "deny_all"

    # --- deciding --------------------------------------------------------------------------

    def decide_name(self, name: str) -> str:
        """The action for a DNS query of `name`: the first domain rule that matches it."""
        name = name.strip().lower().rstrip(".")
        for rule in self.rules:
            if rule.network is None and rule.matches_name(name):
                return rule.action
        return self.default_action

    def decide_address(self, address: str) -> str | None:
        """The action of the first IP or CIDR rule covering `address`, None if none does
        (then names learned through DNS, then `defaultAction`, decide)."""
        ip = ipaddress.ip_address(address)
        for rule, network in self.address_rules():
            if ip.version == network.version and ip in network:
                return rule.action
        return None

    def address_rules(self) -> list[tuple[Rule, Network]]:
        """The IP and CIDR rules, in order, with the addresses each covers."""
        found = []
        for rule in self.rules:
            network = rule.network
            if network is not None:
                found.append((rule, network))
        return found

    # --- changing (the policy API) ---------------------------------------------------------

    def patched(self, incoming: Sequence[Rule]) -> EgressPolicy:
        """Upstream's merge: the incoming rules first (the first of each target wins), then
        the existing rules whose target the patch does not name, in their order;
        `defaultAction` unchanged. Raises `TooManyRules`."""
        merged: list[Rule] = []
        seen: set[str] = set()
        for rule in incoming:
            if rule.target not in seen:
                seen.add(rule.target)
                merged.append(rule)
        merged += [rule for rule in self.rules if rule.target not in seen]
        return EgressPolicy(self.default_action, tuple(merged))._checked()

    def without(self, targets: Iterable[str]) -> tuple[EgressPolicy, int]:
        """The policy less every rule whose target is one of `targets` (trimmed, any case),
        and how many rules went."""
        gone = {_normalise_target(target) for target in targets}
        kept = tuple(rule for rule in self.rules if rule.target not in gone)
        return EgressPolicy(self.default_action, kept), len(self.rules) - len(kept)


def rules_from_document(items: Any, where: str = "rules") -> list[Rule]:
    """`[{action, target}, …]` as rules. Raises `PolicyError` naming the bad item."""
    if not isinstance(items, list):
        raise PolicyError(f"{where} must be a JSON array of {{action, target}} rules.")
    rules = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise PolicyError(f"{where}[{index}] must be an object with action and target.")
        action = _action(item.get("action"), f"{where}[{index}].action")
        target = _target(item.get("target"), f"{where}[{index}].target")
        rules.append(Rule(action, target))
    return rules


def targets_from_document(items: Any) -> list[str]:
    """`["example.com", "*.example.org", …]` (the body of a DELETE)."""
    if not isinstance(items, list) or not items:
        raise PolicyError("The body must be a JSON array of one or more targets, for "
                          "example [\"example.com\"].")
    targets = []
    for index, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            raise PolicyError(f"[{index}] must be a non-empty string naming a rule's target.")
        targets.append(item)
    return targets


def _action(value: Any, where: str) -> str:
    if value is None:
        return DENY
    if not isinstance(value, str):
        raise PolicyError(f"{where} must be \"allow\" or \"deny\" (got {value!r}).")
    action = value.strip().lower()
    if action == "":
        return DENY
    if action not in (ALLOW, DENY):
        raise PolicyError(f"{where} must be \"allow\" or \"deny\" (got {value!r}).")
    return action


def _normalise_target(value: str) -> str:
    target = value.strip().lower()
    if target.endswith(".") and len(target) > 1:
        target = target[:-1]
    return target


def _target(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PolicyError(f"{where} must name a domain (example.com, *.example.com), an IP "
                          "address or a CIDR block.")
    target = _normalise_target(value)
    if "/" in target or ":" in target or target.replace(".", "").isdigit():
        try:
            ipaddress.ip_network(target, strict=False)
        except ValueError:
            raise PolicyError(f"{where}: {value!r} is not an IP address or a CIDR "
                              "block.") from None
        return target
    if len(target) > 253 or DOMAIN.match(target) is None:
        raise PolicyError(f"{where}: {value!r} is not a domain name; use example.com, or "
                          "*.example.com for the names below it.")
    return target
