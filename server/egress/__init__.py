"""The egress API, port 18080 of every sandbox: upstream's egress sidecar, served by the server.

`app.py` is the ASGI app the access layer hands a sandbox's port 18080 to (instead of
forwarding it), `sandbox.py` what a request is for (the sandbox, its token, its lock) and
the plain-text errors upstream's sidecar answers with, `policy.py` the `/policy` routes and
`vault.py` the Credential Vault's. The policy itself, its matching and its enforcement are
the runtime's (`runtimes/egress/`); this layer only translates.
"""
