"""How clients reach a sandbox: the gateway listener, the server proxy route, and the one
dispatch layer both use."""
