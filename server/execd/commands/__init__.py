"""execd commands: streamed runs, timeouts, interrupt, status and bounded cursor-tailed logs.

`runner` runs one command through `Runtime.spawn` (so any runtime can serve it),
`registry` holds a sandbox's commands, `logbuffer` their bounded output, `routes` the HTTP.
"""
