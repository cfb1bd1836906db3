#!/bin/sh
# The code-interpreter image's entrypoint, as the emulator offers it to sandboxes that run
# no image (the fake runtime) and as its Docker test image carries it.
#
# Upstream's script selects language versions, registers Jupyter kernels and runs a
# Jupyter server on 127.0.0.1:$JUPYTER_PORT, which execd then drives. Here execd runs the
# code contexts itself (with the sandbox's own python3, jshell, go, node), so this script
# keeps only what programs can see of it:
#
# * PYTHON_VERSION, JAVA_VERSION, NODE_VERSION and GO_VERSION select a toolchain through
#   code-interpreter-env.sh where this system has a matching one; what was chosen (or that
#   none matched, and what is used instead) is written to this script's output;
# * PATH, JAVA_HOME and GOROOT as chosen are appended to the env file ($EXECD_ENVS), as
#   upstream does, so commands and code contexts started later see them;
# * it keeps the sandbox alive and accepts connections on 127.0.0.1:${JUPYTER_PORT:-44771}
#   (each answered with a 501 saying that no Jupyter runs here), which is what the
#   code-interpreter SDK's readiness check probes.

here=$(dirname -- "$0")
port=${JUPYTER_PORT:-44771}
say() { echo "code-interpreter: $*"; }

start_path=$PATH
for choice in "python:${PYTHON_VERSION:-}" "java:${JAVA_VERSION:-}" \
              "node:${NODE_VERSION:-}" "go:${GO_VERSION:-}"; do
  version=${choice#*:}
  [ -n "$version" ] || continue
  set -- "${choice%%:*}" "$version"
  . "$here/code-interpreter-env.sh"
done
set --
if command -v go >/dev/null 2>&1 && gopath=$(go env GOPATH 2>/dev/null) && [ -n "$gopath" ]; then
  PATH=$PATH:$gopath/bin
  export PATH
fi

# entry NAME VALUE: an env file line, single-quoted (literal) where the value allows it.
entry() {
  case $2 in
    *"'"*) printf '%s=%s\n' "$1" "$2" ;;
    *) printf "%s='%s'\n" "$1" "$2" ;;
  esac
}
if [ -n "${EXECD_ENVS:-}" ]; then
  if ! {
    entry PATH "$PATH"
    [ -z "${JAVA_HOME:-}" ] || entry JAVA_HOME "$JAVA_HOME"
    [ -z "${GOROOT:-}" ] || entry GOROOT "$GOROOT"
  } >>"$EXECD_ENVS" 2>/dev/null; then
    say "cannot append to $EXECD_ENVS: commands will not see the versions chosen here"
  fi
fi
[ "$PATH" = "$start_path" ] || say "PATH=$PATH"

listener='
import signal, socket, sys, threading

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
port = int(sys.argv[1])
body = (b"{\"code\":\"NOT_SUPPORTED\",\"message\":\"no Jupyter server runs in this sandbox: "
        b"the emulator runs code contexts itself, through execd (POST /code)\"}")
reply = (b"HTTP/1.0 501 Not Implemented\r\nContent-Type: application/json\r\n"
         b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)) + body
server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    server.bind(("127.0.0.1", port))
except OSError as error:
    print("code-interpreter: cannot listen on 127.0.0.1:%d (%s)" % (port, error), flush=True)
    while True:
        signal.pause()
server.listen(64)
print("code-interpreter: listening on 127.0.0.1:%d in place of Jupyter" % port, flush=True)


def answer(connection):
    connection.settimeout(2)
    try:
        if connection.recv(65536):
            connection.sendall(reply)
    except OSError:
        pass
    finally:
        connection.close()


while True:
    connection, _ = server.accept()
    threading.Thread(target=answer, args=(connection,), daemon=True).start()
'
if command -v python3 >/dev/null 2>&1; then
  exec python3 -c "$listener" "$port"
fi
if command -v socat >/dev/null 2>&1; then
  say "listening on 127.0.0.1:$port in place of Jupyter (socat)"
  exec socat "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork" SYSTEM:true
fi
say "neither python3 nor socat is here to listen on 127.0.0.1:$port with: a readiness" \
    "check that probes that port will fail; the sandbox stays up"
exec tail -f /dev/null
