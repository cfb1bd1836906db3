"""execd's code interpreting (`/code…`): stateful interpreter contexts inside the sandbox.

`routes` is the HTTP layer; `contexts` keeps a sandbox's contexts; `interpreter` drives one
live interpreter process; `drivers/` holds the programs that run inside the sandbox (one
per language) and `framing` separates their messages from the user's output.
"""
