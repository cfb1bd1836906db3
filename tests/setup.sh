#!/bin/sh
# Everything the test suite needs, on a fresh machine: runc and slirp4netns (each fake
# sandbox is a container with a network of its own), iproute2 (the outbound tests build
# network namespaces) and nftables (egress policies are enforced with it), a virtualenv
# with the server and its test extras (the official Python SDK among them), the official JS
# SDK, and, where a Docker engine answers, the local images the docker runtime's tests run.
set -eu
cd "$(dirname "$0")/.."

# apt_install PACKAGE...: install Debian packages when running as root with apt; else fail.
apt_install() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || return 1
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

missing=""
command -v runc >/dev/null 2>&1 || missing="runc"
command -v slirp4netns >/dev/null 2>&1 || missing="$missing slirp4netns"
command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
command -v nft >/dev/null 2>&1 || missing="$missing nftables"
if [ -n "$missing" ]; then
  # shellcheck disable=SC2086 # one word a package
  apt_install $missing || {
    echo "tests/setup.sh: missing:$missing; install them (e.g. sudo apt-get install$missing)" >&2
    exit 1
  }
fi
# The java and go code contexts run the sandbox's own JDK and Go: on the fake runtime, this
# host's (Debian's openjdk-17-jdk-headless and golang-go).
toolchains=""
command -v jshell >/dev/null 2>&1 || toolchains="openjdk-17-jdk-headless"
command -v go >/dev/null 2>&1 || toolchains="$toolchains golang-go"
if [ -n "$toolchains" ]; then
  # shellcheck disable=SC2086 # one word a package
  apt_install $toolchains || echo "tests/setup.sh: could not install$toolchains; the java" \
      "and go context tests will fail on the fake runtime" >&2
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
# The newest Python SDK, in a virtualenv of its own (tests/test_newer_sdks.py).
[ -x .venv-sdk-next/bin/python ] || python3 -m venv .venv-sdk-next
.venv-sdk-next/bin/python -m pip install -q --disable-pip-version-check 'opensandbox==1.1.1' \
    'opensandbox-code-interpreter==1.1.1'
# A user's install of the package (not editable) beside the newest SDK, for the sample user
# suite (tests/test_user_suite.py). pytest's pin is the one in pyproject.toml's test extra.
[ -x .venv-user/bin/python ] || python3 -m venv .venv-user
rm -rf build  # setuptools would put files deleted from the source into the wheel
.venv-user/bin/python -m pip install -q --disable-pip-version-check . 'opensandbox==1.1.1' \
    "$(sed -n 's/^ *"\(pytest==[^"]*\)",*$/\1/p' pyproject.toml)"
if command -v npm >/dev/null 2>&1; then
  (cd tests/js && npm install --silent --no-audit --no-fund >/dev/null)
  # typescript 7 (a native compiler, not the JS API of 5.x) for the typescript context tests.
  (cd tests/js/typescript7 && npm install --silent --no-audit --no-fund >/dev/null)
  # ... and installed globally, as the code-interpreter image has it: fake sandboxes run this
  # host's node, and the code-interpreter SDK tests create theirs exactly as documented.
  if [ "$(id -u)" = 0 ] && [ ! -e "$(npm prefix -g)/lib/node_modules/typescript" ]; then
    npm install -g --silent --no-audit --no-fund typescript@7.0.2 >/dev/null \
        || echo "tests/setup.sh: could not install typescript globally" >&2
  fi
else
  echo "tests/setup.sh: npm is missing; the JS SDK tests will fail" >&2
fi

# The docker runtime's tests: where an engine answers, build the test images that are missing
# or out of date (tests/docker/build-images.sh: root, busybox-static, debootstrap, npm).
# Without an engine those tests skip (or fail, with OPENSANDBOX_REQUIRE_DOCKER=1).
# As root the script always runs: it skips what is built and up to date in a few seconds.
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 \
    && { [ "$(id -u)" = 0 ] || ! docker image inspect opensandbox-test/busybox:1 \
           opensandbox-test/debian:bookworm opensandbox-test/code:bookworm >/dev/null 2>&1; }; then
  if [ "$(id -u)" != 0 ]; then
    echo "tests/setup.sh: the Docker test images are missing and building them needs root:" \
         "run 'sudo sh tests/docker/build-images.sh'; the docker tests skip until then" >&2
  else
    needed=""
    command -v debootstrap >/dev/null 2>&1 || needed="debootstrap"
    busybox=$(command -v busybox || true)
    if [ -z "$busybox" ] || ldd "$busybox" >/dev/null 2>&1; then  # missing, or not static
      needed="$needed busybox-static"
    fi
    # shellcheck disable=SC2086 # one word a package
    [ -z "$needed" ] || apt_install $needed \
        || echo "tests/setup.sh: could not install$needed" >&2
    sh tests/docker/build-images.sh \
        || echo "tests/setup.sh: building the Docker test images failed (see above); the" \
                "docker tests skip until 'sh tests/docker/build-images.sh' succeeds" >&2
  fi
fi
