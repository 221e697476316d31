"""`pam bench search`: what personalization adds to a search query's latency, and the client's cost.

One run, side by side, on a synthetic catalog (--photos rows of generated features and text:
an album folder and words drawn from a Zipf vocabulary, so queries fill windows of 100-1,000):
    search            the embedded engine alone (tantivy BM25, top N)
    search + rerank   the same, then the top N re-ranked for a user with 50 ratings by the running
                      service over HTTP (pam.search.PersonalSearch through pam.client)
at each window (100, 200, 1,000): one query at a time (1 connection), and open loop (Poisson
arrivals) at half the measured capacity of search + rerank, the same arrivals for both; p50/p99,
latency counted from each query's arrival (queueing included). The open loop runs twice: threads
calling PersonalSearch (a thread per query in flight, a worker thread keeping each deadline), and
one asyncio loop awaiting AsyncPersonalSearch (no thread per query); the threaded one also after
gc.freeze() of the bench's start-up heap (the catalog, the index, the modules), as docs/search.md
advises a long-running search process: a full collection of that heap is the open loop's tail. The service is `pam serve
--ingress direct` (default), its HAProxy ingress, Serve's proxy, or the app under uvicorn without Ray (--ingress).
Then the client's own overhead: pam.client's rerank of 1,000 candidates against the same request
written by hand (on a socket: the target's reference; the standard library's http.client; httpx),
alternating calls.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pam.bench.measure import latency_summary
from pam.bench.open_loop import arrivals
from serving.cluster.memory import freeze_startup_heap

HELP = "search alone vs search + personalized re-rank over HTTP (windows 100-1,000), and the client's overhead"
VERSION = "search-bench-0"
USER = "bench-searcher"
UVICORN_SCRIPT = """
import sys, uvicorn
from serving.online.app import LocalRuntime, create_app
runtime = LocalRuntime({"feature_root": sys.argv[1], "user_store": "sqlite:///" + sys.argv[2]})
uvicorn.run(create_app(runtime), host="127.0.0.1", port=int(sys.argv[3]), log_level="warning")
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--photos", type=int, default=20_000, help="photos in the synthetic catalog (default 20,000)")
    parser.add_argument("--windows", default="100,200,1000", help="re-rank windows (default 100,200,1000)")
    parser.add_argument("--queries", type=int, default=300, help="queries per point at 1 connection (default 300)")
    parser.add_argument("--open-loop-s", type=float, default=10.0, help="seconds per open-loop point (default 10)")
    parser.add_argument("--overhead-calls", type=int, default=300, help="calls per side in the overhead part")
    parser.add_argument("--ingress", choices=("direct", "haproxy", "proxy", "uvicorn"), default="direct",
                        help="how the service is reached: Serve's direct ingress (default), Serve's proxy, or the "
                        "app under uvicorn without Ray")
    parser.add_argument("--dir", type=Path, help="where to write the catalog (default: a temporary directory)")
    parser.add_argument("--quick", action="store_true", help="small sizes: check that it runs")


# ---------------------------------------------------------------- the synthetic catalog
def vocabulary(n: int = 2000) -> list[str]:
    consonants, vowels = "bcdfghklmnprstvz", "aeiou"
    rng = random.Random(7)
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def write_catalog(root: Path, photos: int, seed: int = 0) -> dict:
    """A feature-table version of `photos` generated rows and its text index; the queries."""
    import numpy as np

    from personalize.features import AES_FEAT_DIM, N_ATTRIBUTES, N_CONTENT
    from serving import feature_table as ft
    from serving.search.index import PhotoIndex, describe, index_dir

    rng = np.random.default_rng(seed)
    words = vocabulary()
    weights = 1.0 / np.arange(1, len(words) + 1) ** 0.9
    weights /= weights.sum()
    picks = rng.choice(len(words), size=(photos, 5), p=weights)
    ids = [f"album-{k % 100:03d}/{'_'.join(words[w] for w in row[:2])}_{k:06d}.jpg" for k, row in enumerate(picks)]
    texts = [f"{describe(i)[0]} {' '.join(words[w] for w in row[2:])}" for i, row in zip(ids, picks, strict=True)]
    features = {"aes_score": rng.uniform(1.5, 4.5, photos), "aes_feat": rng.gamma(2.0, 5.0, (photos, AES_FEAT_DIM)),
                "attributes": np.tanh(rng.normal(0, 0.6, (photos, N_ATTRIBUTES))),
                "content": rng.dirichlet(np.ones(N_CONTENT), photos)}
    ft.FeatureTable(str(root)).write_version(ft.feature_table(ids, features, VERSION))
    index = PhotoIndex.build(index_dir(root, VERSION), ((i, t, []) for i, t in zip(ids, texts, strict=True)),
                             {"model_version": VERSION, "text": "synthetic"})
    return {"ids": ids, "index": index, "words": words, "aes": features["aes_score"]}


def queries_for(index, words: list[str], window: int, n: int) -> list[str]:
    """Queries of one to three words whose hits fill the window, cycled to n."""
    found = []
    for k in range(len(words)):
        for size in (1, 2, 3):
            q = " ".join(words[k + j] for j in range(size) if k + j < len(words))
            if len(index.search(q, window)) >= window:
                found.append(q)
                break
        if len(found) >= 40:
            break
    if not found:
        raise RuntimeError(f"no query fills a window of {window}; use more --photos")
    return [found[k % len(found)] for k in range(n)]


# ---------------------------------------------------------------- the service
def start_service(args, root: Path, work: Path):
    """(the process handle with .stop(), base URL) for --ingress."""
    from pam.demo.stages import ServiceProcess, pam_command

    if args.ingress == "uvicorn":
        import subprocess

        from serving.cluster.ports import free_port

        port = free_port("127.0.0.1")
        proc = subprocess.Popen([sys.executable, "-c", UVICORN_SCRIPT, str(root), str(work / "users.db"), str(port)],
                                start_new_session=True)

        class Handle:
            def stop(self):
                proc.terminate()
                proc.wait(30)

        return Handle(), f"http://127.0.0.1:{port}", proc
    argv = pam_command("serve", "--features", str(root), "--users", f"sqlite:///{work / 'users.db'}",
                       "--port", "0", "--num-cpus", "2", "--ingress", args.ingress)
    service = ServiceProcess(argv, work / "serve.log")
    url = service.start(timeout=300)
    if args.ingress == "direct":
        deadline = time.time() + 60
        while time.time() < deadline:
            for line in (work / "serve.log").read_text().splitlines():
                if "direct ingress (no proxy hop): " in line:
                    return service, line.split("direct ingress (no proxy hop): ", 1)[1].split()[0], service.proc
            time.sleep(0.5)
        service.stop()
        raise RuntimeError(f"pam serve printed no direct-ingress URL; see {work / 'serve.log'}")
    return service, url, service.proc


def wait_until_up(client, proc, timeout: float = 180) -> None:
    from pam.client import ConnectionFailed

    deadline = time.time() + timeout
    while True:
        try:
            client.health()
            return
        except ConnectionFailed:
            if proc.poll() is not None or time.time() > deadline:
                raise
            time.sleep(0.5)


# ---------------------------------------------------------------- measurements
def one_connection(search, queries: list[str], personal: bool) -> tuple[list[float], int]:
    latencies, personalized = [], 0
    for q in queries:
        start = time.perf_counter()
        if personal:
            personalized += search.search(q, USER).personalized
        else:
            search.index.search(q, search.window)
        latencies.append((time.perf_counter() - start) * 1e3)
    return latencies, personalized


def capacity(search, queries: list[str], workers: int = 4, seconds: float = 4.0) -> float:
    """Queries/s of search + rerank with `workers` queries in flight (closed loop)."""
    stop = time.perf_counter() + seconds
    done = [0] * workers

    def loop(k):
        j = k
        while time.perf_counter() < stop:
            search.search(queries[j % len(queries)], USER)
            done[k] += 1
            j += workers

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / seconds


def open_loop(fn, queries: list[str], rate: float, seconds: float, seed: int) -> dict:
    """Poisson arrivals at `rate`/s; latency from each arrival to its answer (queueing counted)."""
    times = arrivals(rate, seconds, seed=seed)
    latencies: list[float] = []
    lock = threading.Lock()
    start = time.perf_counter() + 0.05

    def run(k, at):
        fn(queries[k % len(queries)])
        with lock:
            latencies.append((time.perf_counter() - (start + at)) * 1e3)

    with ThreadPoolExecutor(max_workers=64) as pool:
        for k, at in enumerate(times):
            delay = start + at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(run, k, at)
    return {"rate_per_s": round(rate, 1), **latency_summary(latencies)}


async def _async_capacity(search, queries: list[str], workers: int = 4, seconds: float = 4.0) -> float:
    """Queries/s of AsyncPersonalSearch with `workers` queries in flight (closed loop, one loop)."""
    stop = time.perf_counter() + seconds
    done = [0] * workers

    async def loop(k):
        j = k
        while time.perf_counter() < stop:
            await search.search(queries[j % len(queries)], USER)
            done[k] += 1
            j += workers

    await asyncio.gather(*(loop(k) for k in range(workers)))
    return sum(done) / seconds


async def _async_open_loop(fn, queries: list[str], rate: float, seconds: float, seed: int) -> dict:
    """open_loop on one asyncio loop: each arrival starts a task at its time (loop.call_at)."""
    times = arrivals(rate, seconds, seed=seed)
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    start = loop.time() + 0.05
    tasks: list[asyncio.Task] = []

    async def run(k, at):
        await fn(queries[k % len(queries)])
        latencies.append((loop.time() - (start + at)) * 1e3)

    for k, at in enumerate(times):
        loop.call_at(start + at, lambda k=k, at=at: tasks.append(loop.create_task(run(k, at))))
    await asyncio.sleep(start + times[-1] - loop.time() + 0.001 if times else 0)
    await asyncio.gather(*tasks)
    return {"rate_per_s": round(rate, 1), **latency_summary(latencies)}


def _added(alone: dict, both: dict) -> dict:
    return {"search": alone, "search_rerank": both, "added_p50_ms": round(both["p50_ms"] - alone["p50_ms"], 3),
            "added_p99_ms": round(both["p99_ms"] - alone["p99_ms"], 3)}


def async_point(index, url: str, window: int, queries: list[str], seconds: float, quick: bool) -> dict:
    """Capacity and the open loop at half of it, search alone vs + re-rank, through AsyncPersonalSearch."""
    from pam.search.personal import AsyncPersonalSearch

    async def measure():
        async with AsyncPersonalSearch(index, url, deadline_s=1.0, window=window) as search:
            for q in queries[:20]:  # warm-up
                await search.search(q, USER)
            cap = await _async_capacity(search, queries, seconds=3.0 if quick else 5.0)

            async def alone(q):
                search.index.search(q, window)

            rate = cap / 2
            a = await _async_open_loop(alone, queries, rate, seconds, seed=window)
            b = await _async_open_loop(lambda q: search.search(q, USER), queries, rate, seconds, seed=window)
            return cap, a, b

    cap, a, b = asyncio.run(measure())
    return {"capacity_per_s": round(cap, 1), **_added(a, b)}


def client_overhead(url: str, ids: list[str], calls: int) -> dict:
    """pam.client's rerank of 1,000 candidates vs the same request by hand (on a socket: one write,
    the reply's length read from its head, json.loads: the rawest request, the target's reference;
    http.client; httpx), alternating one call of each so drift in the machine's load hits all alike."""
    import http.client
    import socket
    from urllib.parse import urlsplit

    import httpx

    from pam.client import Client

    body = {"candidates": ids}
    path = f"/v1/users/{USER}/rerank"
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    raw_httpx = httpx.Client(timeout=30, trust_env=False)
    client = Client(url, timeout=30)

    def by_client():
        return client.rerank(USER, ids).image_ids

    def by_httpx():
        r = raw_httpx.post(url + path, content=json.dumps(body), headers={"Content-Type": "application/json"})
        return json.loads(r.content)["image_ids"]

    def by_stdlib():
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        return json.loads(conn.getresponse().read())["image_ids"]

    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def by_socket():
        data = json.dumps(body, separators=(",", ":")).encode()
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        got = b""
        while b"\r\n\r\n" not in got:
            got += sock.recv(65536)
        head, _, reply = got.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(reply) < length:
            reply += sock.recv(65536)
        return json.loads(reply)["image_ids"]

    sides = {"pam.client": by_client, "socket by hand": by_socket, "http.client by hand": by_stdlib,
             "httpx by hand": by_httpx}
    times: dict[str, list[float]] = {k: [] for k in sides}
    for fn in sides.values():  # warm-up (connections, the user's model)
        fn()
    for _ in range(calls):
        for name, fn in sides.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    client.close()
    raw_httpx.close()
    conn.close()
    sock.close()
    out = {name: latency_summary(v) for name, v in times.items()}
    for ref in ("socket by hand", "httpx by hand", "http.client by hand"):
        out[f"overhead_vs_{ref.split()[0]}_p50"] = round(out["pam.client"]["p50_ms"] / out[ref]["p50_ms"] - 1, 4)
    return out


def run(args: argparse.Namespace) -> dict:
    from pam.client import Client
    from pam.search.personal import PersonalSearch

    if args.quick:
        args.photos, args.queries = 10_000, min(args.queries, 60)
        args.open_loop_s, args.overhead_calls = min(args.open_loop_s, 3.0), min(args.overhead_calls, 40)
    windows = [int(w) for w in args.windows.split(",")]
    tmp = None if args.dir else tempfile.TemporaryDirectory(prefix="pam-bench-search-")
    work = Path(args.dir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    print(f"pam bench search: writing a catalog of {args.photos} photos", file=sys.stderr, flush=True)
    catalog = write_catalog(work / "features", args.photos)
    print(f"pam bench search: starting the service ({args.ingress})", file=sys.stderr, flush=True)
    service, url, proc = start_service(args, work / "features", work)
    summary: dict = {"photos": args.photos, "ingress": args.ingress, "url": url, "windows": {}, "machine_cpus": None}
    try:
        import os

        summary["machine_cpus"] = os.cpu_count()
        with Client(url, timeout=30) as client:
            wait_until_up(client, proc)
            rated = catalog["ids"][:: max(1, args.photos // 50)][:50]
            client.add_album(USER, rated)
            client.rate(USER, [(i, float(1 + (k * 7) % 5)) for k, i in enumerate(rated)])
        for window in windows:
            print(f"pam bench search: window {window}", file=sys.stderr, flush=True)
            queries = queries_for(catalog["index"], catalog["words"], window, args.queries)
            with PersonalSearch(catalog["index"], url, deadline_s=1.0, window=window) as search:
                one_connection(search, queries[:20], True)  # warm-up
                alone, _ = one_connection(search, queries, False)
                both, personalized = one_connection(search, queries, True)
                cap = capacity(search, queries, seconds=3.0 if args.quick else 5.0)
                rate = cap / 2
                open_alone = open_loop(lambda q, s=search, w=window: s.index.search(q, w), queries, rate,
                                       args.open_loop_s, seed=window)
                open_both = open_loop(lambda q, s=search: s.search(q, USER), queries, rate, args.open_loop_s,
                                      seed=window)
                freeze_startup_heap()  # what docs/search.md advises a long-running search process to do
                try:
                    frozen_alone = open_loop(lambda q, s=search, w=window: s.index.search(q, w), queries, rate,
                                             args.open_loop_s, seed=window)
                    frozen_both = open_loop(lambda q, s=search: s.search(q, USER), queries, rate,
                                            args.open_loop_s, seed=window)
                    on_asyncio = async_point(catalog["index"], url, window, queries, args.open_loop_s, args.quick)
                finally:
                    gc.unfreeze()
            a, b = latency_summary(alone), latency_summary(both)
            summary["windows"][str(window)] = {
                "one_connection": {"search": a, "search_rerank": b,
                                   "added_p50_ms": round(b["p50_ms"] - a["p50_ms"], 3),
                                   "added_p99_ms": round(b["p99_ms"] - a["p99_ms"], 3),
                                   "personalized": f"{personalized}/{len(queries)}",
                                   "over_50ms_deadline": sum(x > 50 for x in both)},
                "capacity_per_s": round(cap, 1),
                "open_loop_half_capacity": _added(open_alone, open_both),
                "open_loop_frozen_heap": _added(frozen_alone, frozen_both),
                "asyncio": on_asyncio}
        print("pam bench search: the client's overhead", file=sys.stderr, flush=True)
        summary["client_overhead_1000"] = client_overhead(url, catalog["ids"][:1000], args.overhead_calls)
    finally:
        service.stop()
        if tmp is not None:
            tmp.cleanup()
    w200 = summary["windows"].get("200")
    if w200:
        summary["target_window_200"] = {
            name: {"added_p50_ms": point["added_p50_ms"], "met_p50": point["added_p50_ms"] <= 5.0,
                   "added_p99_ms": point["added_p99_ms"], "met_p99": point["added_p99_ms"] <= 15.0}
            for name, point in (("one_connection", w200["one_connection"]),
                                ("open_loop_threads", w200["open_loop_half_capacity"]),
                                ("open_loop_threads_frozen_heap", w200["open_loop_frozen_heap"]),
                                ("open_loop_asyncio_frozen_heap", w200["asyncio"]))}
        summary["target_window_200"]["targets_ms"] = {"added_p50": 5.0, "added_p99": 15.0}
    overhead = summary["client_overhead_1000"]["overhead_vs_socket_p50"]  # the rawest request
    summary["target_client_overhead"] = {"overhead_p50": overhead, "target": 0.10, "met": overhead <= 0.10}
    summary["seconds"] = round(time.time() - started, 1)
    summary["_render"] = render(summary)
    return summary


def render(s: dict) -> str:
    lines = [f"pam bench search: {s['photos']} photos, the service through {s['ingress']} ingress ({s['url']})",
             f"  {'window':>6}  {'search p50/p99':>16}  {'+rerank p50/p99':>16}  {'added p50/p99':>14}  "
             f"{'capacity':>9}  {'open loop: search / +rerank p50/p99 (added)':<44}"]

    def open_loop_text(cap: float, ol: dict) -> str:
        return (f"{cap:7.1f}/s  at {ol['search']['rate_per_s']}/s: {ol['search']['p50_ms']:.2f}/"
                f"{ol['search']['p99_ms']:.2f} / {ol['search_rerank']['p50_ms']:.2f}/{ol['search_rerank']['p99_ms']:.2f} "
                f"({ol['added_p50_ms']:+.2f}/{ol['added_p99_ms']:+.2f}) ms")

    for w, r in s["windows"].items():
        one = r["one_connection"]
        lines.append(
            f"  {w:>6}  {one['search']['p50_ms']:7.2f}/{one['search']['p99_ms']:7.2f}  "
            f"{one['search_rerank']['p50_ms']:7.2f}/{one['search_rerank']['p99_ms']:7.2f}  "
            f"{one['added_p50_ms']:6.2f}/{one['added_p99_ms']:6.2f}  "
            f"{open_loop_text(r['capacity_per_s'], r['open_loop_half_capacity'])}  threads")
        pad = f"  {'':>6}  {'':>16}  {'':>16}  {'':>14}  "
        lines.append(pad + f"{open_loop_text(r['capacity_per_s'], r['open_loop_frozen_heap'])}  threads, frozen heap")
        lines.append(pad + f"{open_loop_text(r['asyncio']['capacity_per_s'], r['asyncio'])}  asyncio, frozen heap")
    t = s.get("target_window_200")
    if t:
        for name in ("one_connection", "open_loop_threads", "open_loop_threads_frozen_heap",
                     "open_loop_asyncio_frozen_heap"):
            x = t[name]
            lines.append(f"  target at window 200, {name.replace('_', ' ')}: added p50 {x['added_p50_ms']:.2f} ms "
                         f"(<= 5: {'met' if x['met_p50'] else 'NOT met'}), p99 {x['added_p99_ms']:.2f} ms "
                         f"(<= 15: {'met' if x['met_p99'] else 'NOT met'})")
    o = s["client_overhead_1000"]
    lines.append(f"  client, rerank of 1,000: pam.client p50 {o['pam.client']['p50_ms']:.2f} ms; by hand: socket "
                 f"{o['socket by hand']['p50_ms']:.2f}, http.client {o['http.client by hand']['p50_ms']:.2f}, httpx "
                 f"{o['httpx by hand']['p50_ms']:.2f}: overhead {o['overhead_vs_socket_p50']:+.1%} vs a socket, "
                 f"{o['overhead_vs_http.client_p50']:+.1%} vs http.client, {o['overhead_vs_httpx_p50']:+.1%} vs httpx "
                 f"(target <= 10% vs a socket: {'met' if s['target_client_overhead']['met'] else 'NOT met'})")
    return "\n".join(lines)
