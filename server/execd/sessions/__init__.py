"""Bash sessions: `POST /session`, `POST /session/{id}/run`, `DELETE /session/{id}`."""
