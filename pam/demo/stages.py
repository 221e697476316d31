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


class _Relay(threading.Thread):
    """Copy a child's stderr to ours as it comes (progress bars redraw with \r, so chunks, not
    lines), log it, and keep its last lines for an error message."""

    def __init__(self, stream, log):
        super().__init__(daemon=True)
        self.stream, self.log = stream, log
        self.tail: deque[str] = deque(maxlen=25)
        self.last_output = time.time()
        self._partial = ""

    def run(self) -> None:
        while chunk := self.stream.read1(65536):
            text = chunk.decode(errors="replace")
            self.last_output = time.time()
            if self.log is not None:
                self.log.write(text)
                self.log.flush()
            sys.stderr.write(text)
            sys.stderr.flush()
            lines = (self._partial + text).replace("\r", "\n").split("\n")
            self._partial = lines.pop()
            self.tail.extend(line.rstrip() for line in lines if line.strip())
        if self._partial.strip():
            self.tail.append(self._partial.rstrip())


HEARTBEAT_S = 15.0


def run_json(stage: str, argv: Sequence[str], hint: str, log_path: Path | None = None,
             ok_codes: Sequence[int] = (0,), env: dict | None = None) -> dict:
    """Run a `pam ... --json` subcommand; its progress streams to stderr (with a heartbeat line
    when it is silent for a while), its summary is returned."""
    say("      $ " + " ".join(_shown(a) for a in argv))
    log = log_path.open("w", encoding="utf-8") if log_path else None
    started = time.time()
    try:
        proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, **(env or {})})
        relay = _Relay(proc.stderr, log)
        relay.start()
        out: list[bytes] = []
        reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
        reader.start()
        beat = started
        while proc.poll() is None:
            time.sleep(0.5)
            now = time.time()
            if now - max(relay.last_output, beat) >= HEARTBEAT_S:
                beat = now
                say(f"      ... {stage} still running ({now - started:.0f} s)")
        code = proc.returncode
        reader.join(timeout=30)
        relay.join(timeout=10)
    finally:
        if log is not None:
            log.close()
    lines = b"".join(out).decode(errors="replace").strip().splitlines()
    summary = None
    if lines:
        try:
            summary = json.loads(lines[-1])
        except ValueError:
            summary = None
    if code not in ok_codes or summary is None:
        last = "\n        ".join(relay.tail) or "(no output)"
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
