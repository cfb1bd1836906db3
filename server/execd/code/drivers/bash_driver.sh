# The interpreter behind a bash code context. It runs *inside the sandbox* as
#   bash --noprofile --norc -c <this source> opensandbox-bash <token> <cwd>
# and needs nothing but bash >= 4.1 (and /proc, for interrupts).
#
# Requests arrive on stdin, one per line: `R <seq> <code>` (the code with every backslash
# doubled and every newline written `\n`, undone here with printf %b) or `I <seq>`
# (interrupt cell <seq>; the server repeats it until the cell ends).
# A reader coprocess owns stdin, so an interrupt is seen while a cell runs; it hands run
# requests to this shell. Each cell is `eval`ed in this one shell (through `source`, so that
# `declare` stays global and an interrupt can `return` out of it): variables, functions,
# aliases and the working directory persist between cells. The cell's stdin is /dev/null.
#
# The user's output goes to fd 1 and 2 unchanged. The driver's messages are lines
# `\x1e<token>|<json>` on private copies of fd 1 and 2: `ready`, then per cell `done`
# (stdout; with the exit status) and `sync` (stderr: all the cell's stderr came before it).
#
# Interrupt: SIGINT to the processes the cell started (found through /proc) and to this
# shell, whose trap returns out of the cell; a DEBUG trap then unwinds any shell functions
# the cell was in, so the rest of the cell does not run. The shell and its state survive.
# Between cells this shell ignores SIGINT.

__osb_token=$1
__osb_cwd=$2
set --
exec {__osb_in}<&0 {__osb_out}>&1 {__osb_err}>&2 </dev/null

__osb_send() { printf '\036%s|%s\n' "$__osb_token" "$1" >&"$__osb_out"; }

if [[ -n $__osb_cwd ]]; then
  if ! { mkdir -p -- "$__osb_cwd" && cd -- "$__osb_cwd"; } 2>/dev/null; then
    __osb_send '{"ev":"fatal","cwd":true,"message":"cannot create or enter it"}'
    exit 1
  fi
fi

__osb_interrupt() {
  # Runs in the reader coprocess: SIGINT to every descendant of the main shell (but not
  # to this reader), then to the main shell itself.
  local main=$$ self=$BASHPID file line pid rest
  local -A children=()
  for file in /proc/[0-9]*/stat; do
    read -r line 2>/dev/null <"$file" || continue
    pid=${line%% *}
    rest=${line##*) }
    rest=${rest#* }
    children[${rest%% *}]+=" $pid"
  done
  local -a queue=("$main") found=()
  while ((${#queue[@]})); do
    pid=${queue[0]}
    queue=("${queue[@]:1}")
    for rest in ${children[$pid]}; do
      [[ $rest == "$self" ]] && continue
      found+=("$rest")
      queue+=("$rest")
    done
  done
  ((${#found[@]})) && kill -INT "${found[@]}" 2>/dev/null
  kill -INT "$main" 2>/dev/null
}

coproc __osb_reader {
  exec <&"$__osb_in"
  __osb_last=
  while IFS= read -r __osb_request; do
    case $__osb_request in
      "I $__osb_last") __osb_interrupt ;;
      "R "*)
        __osb_request=${__osb_request#R }
        __osb_last=${__osb_request%% *}
        printf '%s\n' "$__osb_request" ;;
    esac
  done
}
__osb_requests=${__osb_reader[0]}
exec {__osb_in}<&-

__osb_unwind() {
  # DEBUG trap after an interrupt: return out of every function and out of the cell.
  if ((${#BASH_SOURCE[@]} > 1 || ${#FUNCNAME[@]} > 2)); then return 2; fi
  trap - DEBUG
  shopt -u extdebug
  return 0
}
__osb_on_interrupt='__osb_interrupted=1; shopt -s extdebug; trap __osb_unwind DEBUG; return 130 2>/dev/null'
shopt -s expand_aliases

__osb_send '{"ev":"ready","pid":'"$$"',"impl":"bash","version":"'"${BASH_VERSION}"'"}'
while :; do
  # Between cells SIGINT is ignored: a read it interrupted would lose part of a request.
  # (A request to interrupt the next cell that comes too early is repeated by the server.)
  trap '' INT
  IFS= read -r -u "$__osb_requests" __osb_line || break
  __osb_seq=${__osb_line%% *}
  printf -v __osb_code '%b' "${__osb_line#* }"
  __osb_interrupted=
  trap "$__osb_on_interrupt" INT
  source <(printf '%s\n' 'eval "$__osb_code"')
  __osb_rc=$?
  [[ -n $__osb_interrupted ]] && __osb_rc=130
  printf '\036%s|%s\n' "$__osb_token" '{"ev":"sync","seq":'"$__osb_seq"'}' >&"$__osb_err"
  __osb_send '{"ev":"done","seq":'"$__osb_seq"',"rc":'"$__osb_rc"',"interrupted":'"${__osb_interrupted:-0}"'}'
done
