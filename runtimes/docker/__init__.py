"""The `docker` runtime: sandboxes as containers on a Docker engine (see `runtime.py`).

Nothing is imported here, so that reading `settings.py` (the server's config does) does not
load the Docker SDK."""
