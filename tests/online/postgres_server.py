"""A real, throw-away PostgreSQL server: Debian's initdb + pg_ctl in a temp dir, on 127.0.0.1.

initdb refuses to run as root, so as root the server runs as the `postgres` system user (created
by Debian's package). `stop()` always runs, from fixture finalizers.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

PG_BIN_DIRS = [Path(p) for p in ("/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin",
                                 "/usr/lib/postgresql/15/bin")]


def find_pg_bin() -> Path | None:
    env = os.environ.get("PAM_PG_BIN")
    for candidate in ([Path(env)] if env else []) + PG_BIN_DIRS:
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    return None


class PostgresServer:
    def __init__(self, port: int, pg_bin: Path):
        self.port = port
        self.pg_bin = pg_bin
        self.dir = Path(tempfile.mkdtemp(prefix="pam-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self._as_root = os.geteuid() == 0
        self.url = f"postgresql://pam@127.0.0.1:{port}/postgres"

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        command = list(args)
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    def start(self) -> PostgresServer:
        if self._as_root:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        out = self._run(str(self.pg_bin / "initdb"), "-D", str(self.data), "-U", "pam", "--auth=trust",
                        "--no-sync", "-E", "UTF8")
        if out.returncode:
            raise RuntimeError(f"initdb failed: {out.stderr[-2000:]}")
        options = f"-p {self.port} -h 127.0.0.1 -k {self.dir} -c fsync=on -c max_connections=200"
        out = self._run(str(self.pg_bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.log),
                        "-w", "-t", "60", "start")
        if out.returncode:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {out.stderr[-2000:]}\n{log[-2000:]}")
        return self

    def stop(self) -> None:
        if self.data.exists():
            self._run(str(self.pg_bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)

    def drop_all(self) -> None:
        """Empty the pam tables (between tests sharing one server)."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS pam_requests, pam_ratings, pam_album, pam_users")
