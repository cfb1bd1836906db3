# Starts the interpreter of a java or go code context *inside the sandbox*, as
#   /bin/sh -c <this source> opensandbox-<language> <token> <cwd> <language> <driver source>
# It needs a POSIX sh and mktemp, besides the language's own toolchain.
#
# Unlike python, bash and node, these toolchains cannot take a program on the command
# line, and a JVM cannot change its own working directory, so this launcher does what the
# other drivers do for themselves: it enters the working directory, makes sure the
# toolchain is there, and writes the driver into a scratch directory of the context's own
# (under $TMPDIR, else /tmp) before it starts it. It speaks the drivers' protocol (lines
# `\x1e<token>|<json>` on stdout): `fatal` when it cannot start (`missing` names the tool,
# `cwd` a working directory it cannot use), else `scratch` (the directory, which the server
# removes if the interpreter is killed before it removed it itself) and `starting`: the
# context exists from here on, while the JVM or the Go build is still warming up, and its
# first cell waits for the driver's own `ready`.

token=$1
cwd=$2
language=$3
source=$4

say() { printf '\036%s|%s\n' "$token" "$1"; }

if [ -n "$cwd" ]; then
  if ! { mkdir -p -- "$cwd" && cd -- "$cwd"; } 2>/dev/null; then
    say '{"ev":"fatal","cwd":true,"message":"cannot create or enter it"}'
    exit 1
  fi
fi

case $language in
  java) tool=jshell ;;
  go) tool=go ;;
  *) say '{"ev":"fatal","message":"no launcher for this language"}'; exit 1 ;;
esac
if ! command -v "$tool" >/dev/null 2>&1; then
  say '{"ev":"fatal","missing":"'"$tool"'","message":"it is not on the PATH"}'
  exit 127
fi

scratch=$(mktemp -d "${TMPDIR:-/tmp}/opensandbox-$language.XXXXXXXX" 2>/dev/null)
case $scratch in
  /*) ;;
  *) say '{"ev":"fatal","message":"cannot create a scratch directory in $TMPDIR or /tmp"}'
     exit 1 ;;
esac
case $scratch in
  *'"'* | *'\'* | *'
'*) rm -rf -- "$scratch"
    say '{"ev":"fatal","message":"$TMPDIR holds characters a scratch path cannot have"}'
    exit 1 ;;
esac
say '{"ev":"scratch","path":"'"$scratch"'"}'

case $language in
  java)
    # The java of the JDK whose jshell is on the PATH (a JRE beside it has no JShell).
    jshell=$(command -v jshell)
    jshell=$(readlink -f "$jshell" 2>/dev/null || printf '%s' "$jshell")
    java=${jshell%/*}/java
    [ -x "$java" ] || java=java
    if ! printf '%s' "$source" >"$scratch/OpenSandboxJavaDriver.java"; then
      rm -rf -- "$scratch"
      say '{"ev":"fatal","message":"cannot write into the scratch directory"}'
      exit 1
    fi
    say '{"ev":"starting"}'
    # The single-file source launcher (JDK >= 11) compiles the driver in memory. No GC or
    # JIT flags: JAVA_TOOL_OPTIONS may choose those, and two GCs would stop the JVM.
    exec "$java" -XX:-UsePerfData "$scratch/OpenSandboxJavaDriver.java" "$token" "$scratch"
    ;;
  go)
    # A sandbox without a home still needs a build cache: the scratch directory holds one.
    if [ -z "${GOCACHE:-}${XDG_CACHE_HOME:-}${HOME:-}" ]; then
      GOCACHE=$scratch/cache
      export GOCACHE
    fi
    if ! printf '%s' "$source" >"$scratch/driver.go"; then
      rm -rf -- "$scratch"
      say '{"ev":"fatal","message":"cannot write into the scratch directory"}'
      exit 1
    fi
    say '{"ev":"starting"}'
    # The driver is built without the user's flags and without cgo: it needs neither.
    if ! (cd "$scratch" && CGO_ENABLED=0 GOFLAGS= GOWORK=off GO111MODULE= \
          go build -o driver driver.go) >&2; then
      rm -rf -- "$scratch"
      say '{"ev":"fatal","message":"building the go driver with this sandbox'"'"'s go failed (see its stderr)"}'
      exit 1
    fi
    rm -f -- "$scratch/driver.go"
    exec "$scratch/driver" "$token" "$scratch"
    ;;
esac
