#!/bin/sh
# The code-interpreter image's version switcher, as the emulator offers it:
#   . code-interpreter-env.sh <python|java|node|go> <version>
# puts the toolchain of that version first on PATH (and sets JAVA_HOME or GOROOT) in the
# shell that sources it, where this system has one; otherwise it says so and changes
# nothing. Looked for, in order: the image's own layout (/opt/python/versions,
# /usr/lib/jvm, /opt/node, /opt/go), Debian's (/usr/lib/jvm/java-<v>-openjdk-*,
# /usr/lib/go-<v>, pythonX.Y on PATH), and the toolchain already on PATH if its version
# matches. Prints one line saying what it chose.

# __ci_version_of <language>: the version of the toolchain first on PATH, or nothing.
__ci_version_of() {
  case $1 in
    python) python3 -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null ;;
    java) java -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -n 1 ;;
    node) node --version 2>/dev/null | sed 's/^v//' ;;
    go) go env GOVERSION 2>/dev/null | sed 's/^go//' ;;
  esac
}

# __ci_matches <version wanted> <version found>: "17" matches "17.0.2", "1.24" "1.24.3".
__ci_matches() {
  case $2 in
    "$1" | "$1".* | "$1"+* | "$1"-*) return 0 ;;
  esac
  return 1
}

# __ci_first <glob>...: the first existing path the globs name.
__ci_first() {
  for __ci_candidate in "$@"; do
    [ -e "$__ci_candidate" ] && { printf '%s\n' "$__ci_candidate"; return 0; }
  done
  return 1
}

# __ci_shim <name> <program>: a directory whose <name> runs <program>, to put on PATH.
__ci_shim() {
  __ci_dir=${TMPDIR:-/tmp}/opensandbox-code-interpreter/$1-bin
  mkdir -p "$__ci_dir" 2>/dev/null || return 1
  ln -sf "$2" "$__ci_dir/$1" 2>/dev/null || return 1
  printf '%s\n' "$__ci_dir"
}

__ci_select() {
  __ci_language=$1
  __ci_wanted=$2
  __ci_bin=
  __ci_found=$(__ci_version_of "$__ci_language")
  if [ -n "$__ci_found" ] && __ci_matches "$__ci_wanted" "$__ci_found"; then
    __ci_say_chosen
    return 0
  fi
  __ci_old_path=$PATH
  __ci_old_java_home=${JAVA_HOME-unset:}
  __ci_old_goroot=${GOROOT-unset:}
  __ci_made=
  case $__ci_language in
    python)
      __ci_bin=$(__ci_first /opt/python/versions/cpython-"$__ci_wanted"*/bin) ||
        if __ci_program=$(command -v "python$__ci_wanted" 2>/dev/null); then
          __ci_bin=$(__ci_shim python3 "$__ci_program") && __ci_made=$__ci_bin
        fi
      ;;
    java)
      __ci_home=$(__ci_first /usr/lib/jvm/java-"$__ci_wanted"-openjdk-* \
                             /usr/lib/jvm/java-"$__ci_wanted"-* /usr/lib/jvm/jdk-"$__ci_wanted"* \
                             /usr/lib/jvm/*-"$__ci_wanted"-jdk-*) && {
        JAVA_HOME=$__ci_home
        export JAVA_HOME
        __ci_bin=$__ci_home/bin
      }
      ;;
    node)
      __ci_bin=$(__ci_first /opt/node/v"$__ci_wanted"*/bin)
      ;;
    go)
      __ci_root=$(__ci_first /opt/go/"$__ci_wanted"* /usr/lib/go-"$__ci_wanted") && {
        GOROOT=$__ci_root
        export GOROOT
        __ci_bin=$__ci_root/bin
      }
      ;;
    *)
      echo "code-interpreter-env: unknown language $__ci_language (python, java, node, go)"
      return 1
      ;;
  esac
  if [ -n "$__ci_bin" ] && [ -d "$__ci_bin" ]; then
    PATH=$__ci_bin:$PATH
    export PATH
  fi
  __ci_found=$(__ci_version_of "$__ci_language")
  if [ -n "$__ci_bin" ] && ! __ci_matches "$__ci_wanted" "$__ci_found"; then
    # What was found does not run as that version: undo it.
    PATH=$__ci_old_path
    if [ "$__ci_old_java_home" = unset: ]; then unset JAVA_HOME; else JAVA_HOME=$__ci_old_java_home; fi
    if [ "$__ci_old_goroot" = unset: ]; then unset GOROOT; else GOROOT=$__ci_old_goroot; fi
    if [ -n "$__ci_made" ]; then
      rm -rf -- "$__ci_made"
      rmdir -- "${__ci_made%/*}" 2>/dev/null
    fi
    __ci_found=$(__ci_version_of "$__ci_language")
  fi
  if [ -z "$__ci_found" ]; then
    echo "code-interpreter-env: $__ci_language $__ci_wanted not found, and there is no" \
         "$__ci_language here at all"
  elif __ci_matches "$__ci_wanted" "$__ci_found"; then
    __ci_say_chosen
  else
    echo "code-interpreter-env: $__ci_language $__ci_wanted not found; using" \
         "$__ci_language $__ci_found ($(__ci_where "$__ci_language"))"
  fi
}

__ci_say_chosen() {
  echo "code-interpreter-env: $__ci_language $__ci_found ($(__ci_where "$__ci_language"))"
}

__ci_where() {
  case $1 in python) command -v python3 ;; *) command -v "$1" ;; esac
}

if [ $# -ge 2 ]; then
  __ci_select "$1" "$2"
fi
