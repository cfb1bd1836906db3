"""The Diagnostics API: `/v1/sandboxes/{id}/diagnostics/{logs,events}`."""
