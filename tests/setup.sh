#!/bin/sh
# Everything the test suite needs, on a fresh machine: bubblewrap, a virtualenv with the
# server and its test extras (the official Python SDK among them), and the official JS SDK.
set -eu
cd "$(dirname "$0")/.."
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends bubblewrap >/dev/null
  else
    echo "tests/setup.sh: bubblewrap is missing; install it (e.g. sudo apt-get install bubblewrap)" >&2
    exit 1
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
# The newest Python SDK, in a virtualenv of its own (tests/test_newer_sdks.py).
[ -x .venv-sdk-next/bin/python ] || python3 -m venv .venv-sdk-next
.venv-sdk-next/bin/python -m pip install -q --disable-pip-version-check 'opensandbox==1.1.1'
if command -v npm >/dev/null 2>&1; then
  (cd tests/js && npm install --silent --no-audit --no-fund >/dev/null)
else
  echo "tests/setup.sh: npm is missing; the JS SDK tests will fail" >&2
fi
