"""The Lifecycle API: `/v1/sandboxes…`."""
