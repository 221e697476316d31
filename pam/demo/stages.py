"""Stages of the demo: timing, progress on stderr, and failures that name the stage and the fix.

stdout is kept for the final summary (one JSON object with --json); everything a stage prints,
including the progress bars of the `pam` subcommands it runs, goes to stderr.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


class StageFailed(RuntimeError):
    def __init__(self, stage: str, problem: str, hint: str):
        self.stage, self.problem, self.hint = stage, problem, hint
        super().__init__(f"stage '{stage}' failed: {problem}\n  what to do: {hint}")


@dataclass
class StageRecord:
    name: str
    title: str
    seconds: float = 0.0
    items: int | None = None  # images (or ratings) the stage processed, for the rate
    unit: str = "images"
    detail: dict = field(default_factory=dict)

    @property
    def rate(self) -> float | None:
        return self.items / self.seconds if self.items and self.seconds > 0 else None

    def as_dict(self) -> dict:
        return {"name": self.name, "title": self.title, "seconds": round(self.seconds, 2), "items": self.items,
                "unit": self.unit, "per_s": round(self.rate, 2) if self.rate else None, **self.detail}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Stages:
    """Runs the stages in order; `with stages.stage(...) as record:` times one."""

    def __init__(self, total: int):
        self.total = total
        self.records: list[StageRecord] = []
        self.current: str | None = None  # the stage running now (an interrupt names it)

    @contextmanager
    def stage(self, name: str, title: str, hint: str) -> Iterator[StageRecord]:
        record = StageRecord(name, title)
        self.current = name
        say(f"[{len(self.records) + 1}/{self.total}] {title}")
        start = time.perf_counter()
        try:
            yield record
        except StageFailed:
            raise
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            raise StageFailed(name, f"{type(exc).__name__}: {exc}", hint) from exc
        record.seconds = time.perf_counter() - start
        self.records.append(record)
        rate = f", {record.rate:.1f} {record.unit}/s" if record.rate else ""
        say(f"      done in {record.seconds:.1f} s{rate}")

    def as_list(self) -> list[dict]:
        return [r.as_dict() for r in self.records]


def pam_command(*args: str) -> list[str]:
    """The argv of a `pam` subcommand run with this interpreter (works without the console script)."""
    return [sys.executable, "-m", "pam.cli", *args]


def _relay(stream, tail: deque, log) -> None:
    """Copy a child's stderr to ours (indented), keep its last lines, and log it."""
    for raw in iter(stream.readline, b""):
        text = raw.decode(errors="replace")
        tail.append(text.rstrip())
        if log is not None:
            log.write(text)
            log.flush()
        sys.stderr.write("      | " + text if not text.startswith("\r") else text)
        sys.stderr.flush()


def run_json(stage: str, argv: Sequence[str], hint: str, log_path: Path | None = None,
             ok_codes: Sequence[int] = (0,), env: dict | None = None) -> dict:
    """Run a `pam ... --json` subcommand; its progress streams to stderr, its summary is returned."""
    say("      $ " + " ".join(_shown(a) for a in argv))
    log = log_path.open("w", encoding="utf-8") if log_path else None
    tail: deque[str] = deque(maxlen=25)
    try:
        proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, **(env or {})})
        relay = threading.Thread(target=_relay, args=(proc.stderr, tail, log), daemon=True)
        relay.start()
        out = proc.stdout.read()
        code = proc.wait()
        relay.join(timeout=10)
    finally:
        if log is not None:
            log.close()
    lines = out.decode(errors="replace").strip().splitlines()
    summary = None
    if lines:
        try:
            summary = json.loads(lines[-1])
        except ValueError:
            summary = None
    if code not in ok_codes or summary is None:
        last = "\n        ".join(tail) or "(no output)"
        raise StageFailed(stage, f"`{' '.join(argv[2:4])}` exited with status {code}; its last lines:\n        {last}",
                          hint)
    return summary


def _shown(arg: str) -> str:
    if arg == sys.executable:
        return "python"
    return f"'{arg}'" if " " in arg else arg


class ServiceProcess:
    """`pam serve` in its own process group: started, waited for, stopped (SIGTERM, then SIGKILL)."""

    def __init__(self, argv: Sequence[str], log_path: Path):
        self.argv = list(argv)
        self.log_path = log_path
        self.url: str | None = None
        self.proc: subprocess.Popen | None = None
        self._tail: deque[str] = deque(maxlen=25)
        self._ready = threading.Event()

    def start(self, timeout: float = 240.0) -> str:
        say("      $ " + " ".join(_shown(a) for a in self.argv))
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        threading.Thread(target=self._watch, daemon=True).start()
        deadline = time.time() + timeout
        while not self._ready.wait(0.5):
            if self.proc.poll() is not None or time.time() > deadline:
                why = (f"exited with status {self.proc.returncode}" if self.proc.poll() is not None
                       else f"did not say it was listening within {timeout:.0f} s")
                self.stop()
                raise RuntimeError(f"pam serve {why}; its last lines:\n        " + "\n        ".join(self._tail))
        return self.url

    def _watch(self) -> None:
        with self.log_path.open("w", encoding="utf-8") as log:
            for raw in iter(self.proc.stderr.readline, b""):
                text = raw.decode(errors="replace")
                log.write(text)
                log.flush()
                self._tail.append(text.rstrip())
                if not self._ready.is_set() and "listening on " in text:
                    self.url = text.split("listening on ", 1)[1].split()[0]
                    self._ready.set()

    def stop(self, timeout: float = 60.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            try:  # whatever the service left in its group (Ray's processes), ours to end
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
