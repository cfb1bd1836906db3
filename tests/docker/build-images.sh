#!/bin/sh
# Builds the images the Docker tests use, from local material only (no registry is reachable
# in CI): `opensandbox-test/busybox:1` from Debian's busybox-static, and
# `opensandbox-test/debian:bookworm` (bash, python3) from debootstrap and a Debian mirror
# (debootstrap's default one, or DEBIAN_MIRROR). Each image is skipped when it already exists,
# so a second run costs nothing.
#
#   sh tests/docker/build-images.sh            # needs root, docker, busybox-static, debootstrap
#   DEBIAN_MIRROR=http://… sh tests/docker/build-images.sh
#
# `opensandbox-test/code:bookworm` is the Debian image plus what code contexts use: a JDK
# (jshell) and Go from Debian, Node.js from Debian with the `typescript` npm package (7.x,
# fetched with this host's npm), and the code-interpreter image's scripts in both of its
# layouts (/opt/code-interpreter/, /opt/opensandbox/): the ones the emulator offers fake
# sandboxes, standing in for the real image's. It is also tagged with the names the
# code-interpreter SDKs document (opensandbox/code-interpreter:latest and :v1.1.0), which no
# registry serves here, so that their documented create calls run unchanged on Docker.
#
# With --python-base it also builds `opensandbox-test/python:3.11` (the Debian image plus
# python3-venv), a local BASE_IMAGE for building the server's own Dockerfile in CI.
set -eu

BUSYBOX_IMAGE=opensandbox-test/busybox:1
DEBIAN_IMAGE=opensandbox-test/debian:bookworm
PYTHON_IMAGE=opensandbox-test/python:3.11
CODE_IMAGE=opensandbox-test/code:bookworm
CODE_INTERPRETER_NAMES="opensandbox/code-interpreter:latest opensandbox/code-interpreter:v1.1.0"
TYPESCRIPT_VERSION=7.0.2
SCRIPTS=$(cd "$(dirname "$0")/../../server/images/code_interpreter" && pwd)

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if have_image "$BUSYBOX_IMAGE"; then
  echo "build-images: $BUSYBOX_IMAGE exists"
else
  busybox=$(command -v busybox || echo /bin/busybox)
  [ -x "$busybox" ] || { echo "build-images: busybox is missing (apt-get install busybox-static)" >&2; exit 1; }
  if ldd "$busybox" >/dev/null 2>&1; then
    echo "build-images: $busybox is dynamically linked; install busybox-static" >&2; exit 1
  fi
  root="$work/busybox"
  mkdir -p "$root/bin" "$root/etc" "$root/root" "$root/tmp" "$root/proc" "$root/sys" \
           "$root/dev" "$root/home" "$root/usr/bin" "$root/usr/sbin" "$root/sbin" "$root/var"
  chmod 1777 "$root/tmp"
  cp "$busybox" "$root/bin/busybox"
  for applet in $("$root/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
  done
  cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
  cat > "$root/etc/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
GROUP
  # The label is the image's own: GET must never show it as the sandbox's metadata.
  tar -C "$root" -c . | docker import -c 'CMD ["/bin/sh"]' \
      -c 'LABEL org.opencontainers.image.title=opensandbox-test-busybox' \
      -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      - "$BUSYBOX_IMAGE" >/dev/null
  echo "build-images: built $BUSYBOX_IMAGE"
fi

if have_image "$DEBIAN_IMAGE"; then
  echo "build-images: $DEBIAN_IMAGE exists"
else
  command -v debootstrap >/dev/null || { echo "build-images: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
  root="$work/debian"
  # Without DEBIAN_MIRROR no mirror argument is given: debootstrap picks its own default.
  debootstrap --variant=minbase --include=python3,bash bookworm "$root" \
      ${DEBIAN_MIRROR:+"$DEBIAN_MIRROR"} >"$work/debootstrap.log" 2>&1 \
      || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
  tar -C "$root" -c . | docker import -c 'CMD ["/bin/bash"]' \
      -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      -c 'ENV LANG=C.UTF-8' - "$DEBIAN_IMAGE" >/dev/null
  echo "build-images: built $DEBIAN_IMAGE"
fi

# What the image is made of: its package layer (the JDK's jmods and Go's own tests, which
# nothing here uses, removed) and the code-interpreter scripts on top.
code_recipe=$(cat <<DOCKERFILE
FROM $DEBIAN_IMAGE
RUN apt-get update -qq \\
    && apt-get install -y -qq --no-install-recommends openjdk-17-jdk-headless golang-go \\
       nodejs >/dev/null \\
    && rm -rf /var/lib/apt/lists/* /usr/lib/jvm/*/jmods /usr/share/go-*/test \\
    && find /usr/share/go-* -name testdata -type d -prune -exec rm -rf {} +
COPY modules/node_modules /usr/local/lib/node_modules/
COPY code-interpreter.sh code-interpreter-env.sh /opt/code-interpreter/
COPY code-interpreter.sh code-interpreter-env.sh /opt/opensandbox/
RUN chmod 755 /opt/code-interpreter/*.sh /opt/opensandbox/*.sh
DOCKERFILE
)
# Its checksum is a label: an image made from another recipe or older scripts is rebuilt
# (on top of the cached package layer where that did not change).
recipe_sum=$(printf '%s\n%s\n' "$code_recipe" "$TYPESCRIPT_VERSION" \
             | cat - "$SCRIPTS/code-interpreter.sh" "$SCRIPTS/code-interpreter-env.sh" \
             | sha256sum | cut -c1-16)
recipe_of() {
  docker image inspect -f '{{index .Config.Labels "opensandbox-test.recipe"}}' "$1" 2>/dev/null
}
if have_image "$CODE_IMAGE" && [ "$(recipe_of "$CODE_IMAGE")" = "$recipe_sum" ]; then
  echo "build-images: $CODE_IMAGE exists"
else
  command -v npm >/dev/null || { echo "build-images: npm is missing (for the typescript package of $CODE_IMAGE)" >&2; exit 1; }
  context="$work/code"
  mkdir -p "$context/modules"
  npm install --silent --no-audit --no-fund --prefix "$context/modules" \
      "typescript@$TYPESCRIPT_VERSION" >"$work/npm.log" 2>&1 \
      || { cat "$work/npm.log" >&2; exit 1; }
  cp "$SCRIPTS/code-interpreter.sh" "$SCRIPTS/code-interpreter-env.sh" "$context/"
  printf '%s\nLABEL opensandbox-test.recipe=%s\n' "$code_recipe" "$recipe_sum" \
      >"$context/Dockerfile"
  DOCKER_BUILDKIT=0 docker build -q -t "$CODE_IMAGE" "$context" >"$work/build.log" 2>&1 \
      || { cat "$work/build.log" >&2; exit 1; }
  echo "build-images: built $CODE_IMAGE"
fi
for name in $CODE_INTERPRETER_NAMES; do
  if have_image "$name" && [ -z "$(recipe_of "$name")" ]; then
    echo "build-images: $name exists and is not ours: left as it is"
  elif [ "$(recipe_of "$name")" = "$recipe_sum" ]; then
    echo "build-images: $name exists"
  else
    docker tag "$CODE_IMAGE" "$name"
    echo "build-images: tagged $CODE_IMAGE as $name"
  fi
done

if [ "${1:-}" = --python-base ]; then
  if have_image "$PYTHON_IMAGE"; then
    echo "build-images: $PYTHON_IMAGE exists"
  else
    mkdir -p "$work/python"
    # This machine's CA bundle goes in too: where PyPI is reached through a TLS-inspecting
    # proxy, pip inside the image must trust what the host trusts.
    cp /etc/ssl/certs/ca-certificates.crt "$work/python/host-ca.crt" 2>/dev/null \
        || : > "$work/python/host-ca.crt"
    cat > "$work/python/Dockerfile" <<DOCKERFILE
FROM $DEBIAN_IMAGE
RUN apt-get update -qq \\
    && apt-get install -y -qq --no-install-recommends python3-venv ca-certificates >/dev/null \\
    && rm -rf /var/lib/apt/lists/*
COPY host-ca.crt /tmp/host-ca.crt
RUN if [ -s /tmp/host-ca.crt ]; then cp /tmp/host-ca.crt /etc/ssl/certs/ca-certificates.crt; fi \\
    && rm /tmp/host-ca.crt
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
DOCKERFILE
    DOCKER_BUILDKIT=0 docker build -q -t "$PYTHON_IMAGE" "$work/python" >"$work/build.log" 2>&1 \
        || { cat "$work/build.log" >&2; exit 1; }
    echo "build-images: built $PYTHON_IMAGE"
  fi
fi
