"""The embedded execd: the API each sandbox serves on port 44772, run in-process.

One ASGI app serves every sandbox and every runtime; the access layer hands it the
sandbox a request is for (`ExecdSandbox`), and everything below talks to that sandbox's
runtime only through `runtimes.base.Runtime`.
"""
