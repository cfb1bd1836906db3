"""Interactive terminals: `POST /pty`, `GET|DELETE /pty/{id}`, WebSocket `/pty/{id}/ws`."""
