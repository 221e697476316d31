"""The online service: per-user PAM behind an HTTP API, on Ray Serve or in-process."""
