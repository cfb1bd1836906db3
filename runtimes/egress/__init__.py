"""Egress: a sandbox's outbound network policy and how it is enforced.

`policy.py` is the model (rules, matching, the policy API's merge), `nftables.py` writes the
rules the kernel enforces, `namespaces.py` enters a sandbox's network namespace from the
server, `dns.py` is the DNS forwarder that answers the sandbox's queries (`resolvers.py`:
whom it asks), and `enforcement.py` ties them together for one sandbox. Both runtimes use
it; the server only translates the egress API (port 18080) to it.
"""
