"""Local Ray start-up and free ports: what every process that starts a server shares."""
