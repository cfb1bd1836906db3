"""The egress policy model on its own: reading a policy as upstream's sidecar reads it, which
rule decides a name or an address, the policy API's merge and delete, and the nftables
rules a policy becomes (checked by nftables itself, in a network namespace of its own)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest

from opensandbox_emulator.runtimes.egress import nftables
from opensandbox_emulator.runtimes.egress.policy import (
    EgressPolicy,
    PolicyError,
    Rule,
    TooManyRules,
    rules_from_document,
    targets_from_document,
)
from opensandbox_emulator.runtimes.egress.resolvers import parse_upstreams


def policy(default: str, *rules: tuple[str, str]) -> EgressPolicy:
    return EgressPolicy(default, tuple(Rule(action, target) for action, target in rules))


@pytest.mark.parametrize("document", [None, "", {}])
def test_nothing_is_deny_all(document: object) -> None:
    read = EgressPolicy.from_document(document)
    assert read == EgressPolicy("deny") and read.mode == "deny_all"
    assert read.document() == {"defaultAction": "deny", "egress": []}


def test_reading_trims_and_lowers_and_fills_in_deny() -> None:
    read = EgressPolicy.from_document({"egress": [
        {"action": " Allow ", "target": " Example.COM. "}, {"action": "", "target": "*.b.org"},
        {"target": "10.0.0.0/8"}, {"action": "deny", "target": "FD00::1"}]})
    assert read == policy("deny", ("allow", "example.com"), ("deny", "*.b.org"),
                          ("deny", "10.0.0.0/8"), ("deny", "fd00::1"))
    assert read.mode == "enforcing"
    assert EgressPolicy.from_document({"defaultAction": "ALLOW"}).mode == "allow_all"


@pytest.mark.parametrize("document, mentions", [
    ({"defaultAction": "maybe"}, "defaultAction"),
    ({"egress": [{"action": "permit", "target": "a.b"}]}, "egress[0].action"),
    ({"egress": [{"action": "allow", "target": "  "}]}, "egress[0].target"),
    ({"egress": [{"action": "allow"}]}, "egress[0].target"),
    ({"egress": [{"action": "allow", "target": "a b.com"}]}, "not a domain"),
    ({"egress": [{"action": "allow", "target": "*example.com"}]}, "not a domain"),
    ({"egress": [{"action": "allow", "target": "a.*.com"}]}, "not a domain"),
    ({"egress": [{"action": "allow", "target": "300.1.1.1"}]}, "IP address"),
    ({"egress": [{"action": "allow", "target": "10.0.0.0/33"}]}, "CIDR"),
    ({"egress": "example.com"}, "list"),
    (["example.com"], "object"),
])
def test_what_cannot_be_read_says_which_part(document: object, mentions: str) -> None:
    with pytest.raises(PolicyError, match=mentions.replace("[", r"\[").replace("]", r"\]")):
        EgressPolicy.from_document(document)


def test_names_are_decided_by_the_first_matching_domain_rule() -> None:
    rules = policy("deny", ("deny", "bad.example.com"), ("allow", "*.example.com"),
                   ("allow", "example.org"), ("allow", "10.0.0.1"))
    assert rules.decide_name("a.example.com") == "allow"
    assert rules.decide_name("a.b.example.com") == "allow"  # any depth
    assert rules.decide_name("BAD.example.com.") == "deny"  # the rule before wins
    assert rules.decide_name("example.com") == "deny"  # a wildcard is not its apex
    assert rules.decide_name("notexample.com") == "deny"
    assert rules.decide_name("example.org") == "allow"
    assert rules.decide_name("www.example.org") == "deny"  # exact means exact
    assert rules.decide_name("10.0.0.1") == "deny"  # address rules do not decide names
    assert policy("allow", ("deny", "x.com")).decide_name("y.com") == "allow"


def test_addresses_are_decided_by_the_first_matching_address_rule() -> None:
    rules = policy("deny", ("deny", "10.1.2.3"), ("allow", "10.0.0.0/8"),
                   ("allow", "example.com"), ("deny", "fd00::/8"))
    assert rules.decide_address("10.1.2.3") == "deny"
    assert rules.decide_address("10.1.2.4") == "allow"
    assert rules.decide_address("11.0.0.1") is None  # then learned names and the default
    assert rules.decide_address("fd00::5") == "deny"


def test_a_patch_puts_its_rules_first_and_keeps_the_others() -> None:
    current = policy("deny", ("allow", "a.com"), ("allow", "b.com"), ("deny", "c.com"))
    patched = current.patched(rules_from_document([
        {"action": "deny", "target": "B.com"}, {"action": "allow", "target": "d.com"},
        {"action": "allow", "target": "b.com"}]))
    assert patched == policy("deny", ("deny", "b.com"), ("allow", "d.com"), ("allow", "a.com"),
                             ("deny", "c.com"))
    assert policy("allow").patched([Rule("deny", "x.com")]).default_action == "allow"


def test_a_patch_past_the_limit_is_refused() -> None:
    many = [Rule("allow", f"h{i}.com") for i in range(4096)]
    assert len(EgressPolicy("deny").patched(many).rules) == 4096
    with pytest.raises(TooManyRules):
        EgressPolicy("deny").patched([*many, Rule("allow", "one-more.com")])


def test_delete_removes_every_rule_of_the_targets() -> None:
    current = policy("deny", ("allow", "a.com"), ("deny", "*.b.com"), ("allow", "c.com"))
    kept, removed = current.without(targets_from_document([" A.COM ", "*.b.com", "zzz"]))
    assert (kept, removed) == (policy("deny", ("allow", "c.com")), 2)
    assert current.without(["nothing.com"]) == (current, 0)
    for body in ([], [""], [1], "a.com", None):
        with pytest.raises(PolicyError):
            targets_from_document(body)


def test_resolver_addresses() -> None:
    assert parse_upstreams("10.0.0.2, 10.0.0.3:5353,[fd00::1]:54, fd00::2") == [
        ("10.0.0.2", 53), ("10.0.0.3", 5353), ("fd00::1", 54), ("fd00::2", 53)]
    for bad in ("dns.example.com", "10.0.0.2:0", "10.0.0.2:x"):
        with pytest.raises(ValueError):
            parse_upstreams(bad)


@pytest.mark.parametrize("mode", nftables.MODES)
def test_the_rules_are_what_nftables_takes(mode: str) -> None:
    """Every policy shape renders to a script nftables applies, and the rules read back
    in the policy's order. Done by `nft` in a network namespace made for the test."""
    if os.geteuid() != 0 or shutil.which("nft") is None or shutil.which("ip") is None:
        pytest.skip("needs root, nftables and iproute2")
    namespace = f"osb-nft-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        def nft(script: str) -> str:
            done = subprocess.run(["ip", "netns", "exec", namespace, "nft", "-f", "-"],
                                  input=script, capture_output=True, text=True)
            assert done.returncode == 0, (done.stderr, script)
            listed = subprocess.run(["ip", "netns", "exec", namespace, "nft", "list",
                                     "ruleset"], capture_output=True, text=True, check=True)
            return listed.stdout

        rules = policy("deny", ("deny", "10.1.2.3"), ("allow", "10.0.0.0/8"),
                       ("allow", "example.com"), ("deny", "fd00::/8"))
        listed = nft(nftables.ruleset(rules, mode, [("192.0.2.1", 100), ("2001:db8::1", 70)]))
        assert "redirect to :15353" in listed
        if mode == nftables.DNS:
            assert "chain egress" not in listed
            return
        assert listed.index("10.1.2.3") < listed.index("10.0.0.0/8") < listed.index("fd00::/8")
        assert "192.0.2.1 timeout" in listed and "2001:db8::1 timeout" in listed
        listed = nft(nftables.ruleset(policy("allow"), mode) + nftables.learn([("192.0.2.9", 5)]))
        assert "10.1.2.3" not in listed and "192.0.2.1" not in listed  # replaced whole
        assert "192.0.2.9 timeout 5s" in listed
        assert "table inet opensandbox" not in nft(nftables.removal())
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=True)


def test_learned_addresses_live_as_long_as_upstream_lets_them() -> None:
    assert [nftables.learned_seconds(ttl) for ttl in (0, 30, 200, 300, 86400)] == [
        60, 90, 260, 360, 360]
