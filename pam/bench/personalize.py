"""`pam bench personalize`: PAM fit / predict, one Active-PAM step, the Table-4 protocol.

Each figure is measured beside the straightforward version in the same run:
- fit on 100 ratings: PAM.fit (validation + libsvm + copying the expansion out) vs a bare
  sklearn NuSVR.fit on the same offsets (the floor PAM adds to);
- predict 1,000 candidates: PAM's vectorised RBF expansion vs libsvm (NuSVR.predict) vs a
  per-candidate Python loop; FLOPs of the expansion against the 2 cores' FMA peak;
- one Active-PAM step (rate a photo, refit, choose the next) on a 10,000-photo album with 100
  rated photos: incremental distance columns vs recomputing every distance each step vs a
  per-candidate Python loop (one step only: it is slow);
- the Table-4 protocol (all test workers, k = 10 and 100): 2 processes vs 1, same results;
- with a population taste prior (personalize.prior, personalize.strategy): Prior-PAM's fit on
  100 ratings (posterior + residual nu-SVR) vs PAM's fit; re-ranking 1,000 candidates with the
  posterior s.d. (one einsum) vs the plain diagonal of the [1000, 1000] predictive covariance;
  one posterior-strategy step (rate, refit, choose) on a 10,000-photo album vs conditioning on
  each candidate explicitly (timed on 200 candidates, scaled to the album).
- a user's taste (100 ratings, 1,000-photo album), for PAM and for Prior-PAM (with and without its
  residual nu-SVR): the analytic gradients vs the same model differentiated numerically through
  predict(); reasons of 1,000 candidates vs the re-rank's predict.
Targets on this machine: fit <= 2 ms, predict <= 1 ms, step <= 5 ms, Table 4 within minutes;
with the prior: fit <= 2 ms, re-rank with uncertainty <= 2 ms, strategy step <= 5 ms; taste <= 5 ms,
reasons <= 1 ms.
"""

from __future__ import annotations

import argparse
import statistics
import time

HELP = "PAM fit/predict, Active-PAM step, Table-4 protocol: side by side with the plain versions"
FMA_PEAK_FLOPS = 157e9  # fp32 FMA peak of the 2 cores (float64 runs at half of it)
_quick = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--album", type=int, default=10_000, help="album size for the Active-PAM step")
    parser.add_argument("--rated", type=int, default=100, help="rated photos before the timed step")
    parser.add_argument("--table4-repeats", type=int, default=50, help="repeats per user in the protocol run (the paper's 50)")
    parser.add_argument("--table4-scale", type=float, default=1.0, help="panel size for the protocol run")
    parser.add_argument("--skip-table4", action="store_true")
    parser.add_argument("--quick", action="store_true", help="one timing round with few calls (a smoke run)")


def _time(fn, number: int, rounds: int = 5) -> float:
    """Median over rounds of the mean seconds per call."""
    if _quick:
        number, rounds = max(1, number // 20), 1
    fn()
    per = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(number):
            fn()
        per.append((time.perf_counter() - t) / number)
    return statistics.median(per)


def _user(rng, n):
    import numpy as np

    x = np.hstack([rng.uniform(-1, 1, (n, 10)), rng.dirichlet(np.ones(10) * 0.3, n)])
    aes = rng.uniform(1.5, 4.5, n)
    y = np.clip(np.round(aes + x[:, 0] - x[:, 12] + rng.normal(0, 0.5, n)), 1, 5)
    return np.hstack([x, aes[:, None]]), y


def bench_fit_predict() -> dict:
    import numpy as np
    from sklearn.svm import NuSVR

    from personalize.pam import PAM

    rng = np.random.default_rng(0)
    X, y = _user(rng, 100)
    Xc, _ = _user(rng, 1000)
    model = PAM().fit(X, y)
    svr = NuSVR(nu=model.nu, C=model.C, gamma=model.gamma_).fit(X[:, :-1], y - X[:, -1])
    fit_pam = _time(lambda: PAM().fit(X, y), 50)
    fit_svr = _time(lambda: NuSVR(nu=0.5, C=1.0, gamma=0.1).fit(X[:, :-1], y - X[:, -1]), 50)
    pred_pam = _time(lambda: model.predict(Xc), 200)
    pred_svr = _time(lambda: Xc[:, -1] + svr.predict(Xc[:, :-1]), 50)
    sv, coef, b, g = model.support_vectors_, model.dual_coef_, model.intercept_, model.gamma_

    def loop():
        out = np.empty(len(Xc))
        for i, row in enumerate(Xc):
            out[i] = row[-1] + np.exp(-g * ((sv - row[:-1]) ** 2).sum(1)) @ coef + b
        return out

    pred_loop = _time(loop, 2, rounds=3)
    err = float(np.abs(model.predict(Xc) - (Xc[:, -1] + svr.predict(Xc[:, :-1]))).max())
    n_sv = sv.shape[0]
    flops = 1000 * n_sv * (2 * sv.shape[1] + 4)  # distance via one product, exp, multiply-add
    return {
        "fit_100_ratings_ms": {"pam": fit_pam * 1e3, "bare_nusvr": fit_svr * 1e3,
                               "pam_overhead_ratio": fit_pam / fit_svr, "target_ms": 2.0},
        "predict_1000_ms": {"pam_vectorised": pred_pam * 1e3, "libsvm": pred_svr * 1e3,
                            "python_loop": pred_loop * 1e3, "speedup_vs_libsvm": pred_svr / pred_pam,
                            "speedup_vs_loop": pred_loop / pred_pam, "target_ms": 1.0,
                            "max_abs_diff_vs_libsvm": err, "support_vectors": n_sv,
                            "gflops": flops / pred_pam / 1e9,
                            "fraction_of_fma_peak": flops / pred_pam / FMA_PEAK_FLOPS},
    }


def bench_active_step(album: int, rated: int) -> dict:
    import numpy as np
    from scipy.spatial.distance import cdist

    from personalize.active import ActivePAM, eq5_weights
    from personalize.features import visual_vector
    from personalize.pam import PAM

    rng = np.random.default_rng(1)
    X, y = _user(rng, album)
    V = visual_vector(rng.gamma(2.0, 10.0, (album, 176)), X[:, -1])
    state = ActivePAM(V, X, seed=0)
    for _ in range(rated):
        (i,) = state.suggest()
        state.add_rating(i, y[i])

    def incremental():
        (i,) = state.suggest()
        state.add_rating(i, y[i])

    R = list(state.rated_indices)

    def full_recompute():
        model = PAM().fit(X[R], y[R])
        w = eq5_weights(model.predict(X[R]) - y[R])
        mask = np.ones(album, dtype=bool)
        mask[R] = False
        cand = np.flatnonzero(mask)
        q = int(cand[np.argmax(cdist(V[cand], V[R]) @ w)])
        R.append(q)

    def python_loop():
        model = PAM().fit(X[R], y[R])
        w = eq5_weights(model.predict(X[R]) - y[R])
        rated = set(R)
        best, best_q = -1.0, -1
        for q in range(album):
            if q in rated:
                continue
            d = float(np.sqrt(((V[R] - V[q]) ** 2).sum(1)) @ w)
            if d > best:
                best, best_q = d, q
        R.append(best_q)

    t_inc = _time(incremental, 20)
    t_full = _time(full_recompute, 5)
    t_loop = _time(python_loop, 1, rounds=1)
    return {"album": album, "rated_before": rated,
            "step_ms": {"incremental": t_inc * 1e3, "full_recompute": t_full * 1e3, "python_loop": t_loop * 1e3,
                        "speedup_vs_full": t_full / t_inc, "speedup_vs_loop": t_loop / t_inc, "target_ms": 5.0}}


def _bench_prior(rng):
    import numpy as np

    from personalize.prior import RaterData, fit_prior

    raters = []
    for _ in range(40):
        X, _ = _user(rng, 200)
        theta = rng.normal(0, 0.15, 21)
        y = np.clip(np.round(X[:, -1] + np.hstack([np.ones((200, 1)), X[:, :-1]]) @ theta
                             + rng.normal(0, 0.5, 200)), 1, 5)
        raters.append(RaterData(X, y))
    prior = fit_prior(raters, choose=False)
    prior.residual_C, prior.residual_min_ratings = 0.1, 0  # the costlier variant: residual SVR on
    return prior


def bench_prior(album: int) -> dict:
    import numpy as np

    from personalize.pam import PAM
    from personalize.prior import PriorPAM
    from personalize.strategy import PosteriorStrategy

    rng = np.random.default_rng(2)
    prior = _bench_prior(rng)
    X, y = _user(rng, 100)
    Xc, _ = _user(rng, 1000)
    fit_prior_ms = _time(lambda: PriorPAM(prior).fit(X, y), 50)
    fit_pam_ms = _time(lambda: PAM().fit(X, y), 50)
    model = PriorPAM(prior).fit(X, y)
    with_std = _time(lambda: model.predict(Xc, return_std=True), 200)
    without = _time(lambda: model.predict(Xc), 200)

    def full_covariance():
        phi = prior.phi(Xc[:, :-1])
        return model.predict(Xc), np.sqrt(np.diag(phi @ model.theta_cov_ @ phi.T))

    plain = _time(full_covariance, 10)
    err = float(np.abs(full_covariance()[1] - model.predict(Xc, return_std=True)[1]).max())

    Xa, ya = _user(rng, album)
    state = PosteriorStrategy(None, Xa, prior=prior)
    for _ in range(100):
        (i,) = state.suggest()
        state.add_rating(i, ya[i])

    def step():
        (i,) = state.suggest()
        state.add_rating(i, ya[i])

    t_step = _time(step, 20)
    phi = state.phi
    centred = phi - phi.mean(0)
    m = state.model
    S, s2 = m.theta_cov_, prior.noise_var
    sample = rng.choice(album, 200, replace=False)

    def explicit():  # condition on each candidate and sum the album's variance drop
        out = []
        for q in sample:
            s = S @ phi[q]
            after = S - np.outer(s, s) / (phi[q] @ s + s2)
            out.append(np.einsum("ij,jk,ik->", centred, S - after, centred))
        return out

    t_explicit = _time(explicit, 1, rounds=3) * album / sample.size
    return {"fit_100_ratings_ms": {"prior_pam": fit_prior_ms * 1e3, "pam": fit_pam_ms * 1e3, "target_ms": 2.0},
            "rerank_1000_with_std_ms": {"prior_pam": with_std * 1e3, "without_std": without * 1e3,
                                        "full_covariance_diagonal": plain * 1e3,
                                        "speedup_vs_full": plain / with_std, "max_abs_diff": err, "target_ms": 2.0},
            "strategy_step_ms": {"album": album, "rated_before": 100, "posterior": t_step * 1e3,
                                 "explicit_conditioning_estimated": t_explicit * 1e3,
                                 "speedup_vs_explicit": t_explicit / t_step, "target_ms": 5.0}}


def _bench_taste(model, album, rated, y_rated, candidates) -> dict:
    from personalize import explain

    class Opaque:  # the same model through predict() only: the numerical path
        def predict(self, X):
            return model.predict(X)

    taste = explain.taste(model, album, album[rated], y_rated)
    t_taste = _time(lambda: explain.taste(model, album, album[rated], y_rated), 50)
    t_numeric = _time(lambda: explain.taste(Opaque(), album, album[rated], y_rated), 5)
    t_reasons = _time(lambda: explain.top_reasons(model, taste, candidates), 100)
    t_predict = _time(lambda: model.predict(candidates), 100)
    return {"taste_100_ratings_1000_album_ms": {"analytic": t_taste * 1e3, "numerical": t_numeric * 1e3,
                                                "speedup": t_numeric / t_taste, "target_ms": 5.0},
            "reasons_1000_candidates_ms": {"reasons": t_reasons * 1e3, "rerank_predict": t_predict * 1e3,
                                           "ratio_to_predict": t_reasons / t_predict, "target_ms": 1.0}}


def bench_explain() -> dict:
    """Taste of a user with 100 ratings over a 1,000-photo album, and the reasons of a 1,000-candidate
    re-rank, beside the plain versions: the same taste from the model seen only through predict()
    (central differences), and the re-rank's own prediction (what reasons add to). For PAM, and
    for Prior-PAM with its residual nu-SVR on (the costlier variant) and without it."""
    import numpy as np

    from personalize.pam import PAM
    from personalize.prior import PriorPAM

    rng = np.random.default_rng(2)
    album, y_album = _user(rng, 1000)
    rated = rng.choice(1000, 100, replace=False)
    candidates, _ = _user(rng, 1000)
    model = PAM().fit(album[rated], y_album[rated])
    out = _bench_taste(model, album, rated, y_album[rated], candidates)
    out["support_vectors"] = int(model.support_vectors_.shape[0])
    prior = _bench_prior(np.random.default_rng(3))
    with_residual = PriorPAM(prior).fit(album[rated], y_album[rated])
    out["prior_pam"] = _bench_taste(with_residual, album, rated, y_album[rated], candidates)
    out["prior_pam"]["residual_support_vectors"] = int(with_residual.residual_.support_vectors_.shape[0])
    prior.residual_C = None
    out["prior_pam_linear"] = _bench_taste(PriorPAM(prior).fit(album[rated], y_album[rated]), album, rated,
                                           y_album[rated], candidates)
    return out


def render_explain(e: dict) -> list[str]:
    lines = []
    for key, label in (("", "PAM"), ("prior_pam", "Prior-PAM + residual SVR"), ("prior_pam_linear", "Prior-PAM linear")):
        part = e[key] if key else e
        if not part:
            continue
        t, r = part["taste_100_ratings_1000_album_ms"], part["reasons_1000_candidates_ms"]
        lines += [f"| {label} taste, 100 ratings over 1,000 photos | {t['analytic']:.2f} ms | numerical (predict "
                  f"only) {t['numerical']:.1f} ms | {t['speedup']:.0f}x faster | <= 5 ms |",
                  f"| {label} reasons, 1,000 candidates | +{r['reasons']:.3f} ms | the re-rank's predict "
                  f"{r['rerank_predict']:.3f} ms | x{r['ratio_to_predict']:.2f} of predict | <= 1 ms |"]
    return lines


def bench_table4(repeats: int, scale: float) -> dict:
    import numpy as np

    from personalize import protocols as P
    from personalize.blas import single_blas_thread
    from personalize.simulate import PanelConfig, simulate_panel

    config = PanelConfig() if scale == 1.0 else PanelConfig().scaled(scale)
    panel = simulate_panel(config)
    data, fm = panel.dataset(), panel.properties.features()
    with single_blas_thread():
        t = time.perf_counter()
        fpmf = P.fpmf_for(data, fm, max_iter=150)
        t_fpmf = time.perf_counter() - t
        times, raws = {}, {}
        for jobs in (2, 1):
            t = time.perf_counter()
            raws[jobs] = P.table4(data, fm, repeats=repeats, n_jobs=jobs, fpmf=fpmf)["raw"]
            times[jobs] = time.perf_counter() - t
    per_repeat_50 = times[2] / repeats * 50
    return {"users": len(data.test_workers), "repeats": repeats, "fpmf_train_s": t_fpmf,
            "protocol_s": {"two_processes": times[2], "one_process": times[1], "speedup": times[1] / times[2]},
            "identical_results": bool(np.array_equal(raws[1], raws[2], equal_nan=True)),
            "estimated_full_protocol_s": t_fpmf + per_repeat_50}


def run(args: argparse.Namespace) -> dict:
    from personalize.blas import single_blas_thread

    global _quick
    _quick = bool(getattr(args, "quick", False))
    # one BLAS thread, as in a 1-CPU serving replica: these matrices are too small for threads to
    # pay, and on a shared machine threads only contend
    with single_blas_thread():
        summary = {"fit_predict": bench_fit_predict(), "active_step": bench_active_step(args.album, args.rated),
                   "prior": bench_prior(args.album)}
        summary["explain"] = bench_explain()
    if not args.skip_table4:
        summary["table4"] = bench_table4(args.table4_repeats, args.table4_scale)
    summary["_render"] = render(summary)
    return summary


def render(s: dict) -> str:
    fp, st = s["fit_predict"], s["active_step"]
    f, p, a = fp["fit_100_ratings_ms"], fp["predict_1000_ms"], st["step_ms"]
    lines = [
        "| benchmark | project | plain alternative(s) | ratio | target |",
        "|---|---|---|---|---|",
        f"| PAM fit, 100 ratings | {f['pam']:.2f} ms | bare NuSVR.fit {f['bare_nusvr']:.2f} ms | "
        f"x{f['pam_overhead_ratio']:.2f} (overhead) | <= 2 ms |",
        f"| PAM predict, 1,000 candidates ({p['support_vectors']} SVs) | {p['pam_vectorised']:.3f} ms | "
        f"libsvm {p['libsvm']:.3f} ms; Python loop {p['python_loop']:.1f} ms | "
        f"{p['speedup_vs_libsvm']:.1f}x / {p['speedup_vs_loop']:.0f}x faster | <= 1 ms |",
        f"| Active-PAM step, {st['album']:,} photos, {st['rated_before']} rated | {a['incremental']:.2f} ms | "
        f"full recompute {a['full_recompute']:.2f} ms; Python loop {a['python_loop']:.0f} ms | "
        f"{a['speedup_vs_full']:.1f}x / {a['speedup_vs_loop']:.0f}x faster | <= 5 ms |",
    ]
    if "prior" in s:
        pf, pr, ps = s["prior"]["fit_100_ratings_ms"], s["prior"]["rerank_1000_with_std_ms"], s["prior"]["strategy_step_ms"]
        lines += [
            f"| Prior-PAM fit, 100 ratings | {pf['prior_pam']:.2f} ms | PAM fit {pf['pam']:.2f} ms | "
            f"x{pf['prior_pam'] / pf['pam']:.2f} | <= 2 ms |",
            f"| Prior-PAM re-rank 1,000 with s.d. | {pr['prior_pam']:.3f} ms (without s.d. {pr['without_std']:.3f}) | "
            f"diagonal of the full covariance {pr['full_covariance_diagonal']:.2f} ms | "
            f"{pr['speedup_vs_full']:.1f}x faster | <= 2 ms |",
            f"| posterior strategy step, {ps['album']:,} photos, {ps['rated_before']} rated | {ps['posterior']:.2f} ms | "
            f"explicit conditioning per candidate ~{ps['explicit_conditioning_estimated']:.0f} ms (200 timed) | "
            f"{ps['speedup_vs_explicit']:.0f}x faster | <= 5 ms |"]
    if "explain" in s:
        lines += render_explain(s["explain"])
    if "table4" in s:
        t = s["table4"]
        lines.append(
            f"| Table-4 protocol, {t['users']} users x {t['repeats']} repeats x k=10,100 | "
            f"{t['protocol_s']['two_processes']:.1f} s (2 processes) | 1 process {t['protocol_s']['one_process']:.1f} s | "
            f"{t['protocol_s']['speedup']:.2f}x | minutes |")
        lines.append(f"\nFPMF network (once per data set) {t['fpmf_train_s']:.1f} s; identical results with 1 and 2 "
                     f"processes: {t['identical_results']}; full protocol (50 repeats) estimated "
                     f"{t['estimated_full_protocol_s']:.0f} s.")
    lines.append(f"Predict: max |PAM - libsvm| = {p['max_abs_diff_vs_libsvm']:.1e}; {p['gflops']:.2f} GFLOP/s = "
                 f"{100 * p['fraction_of_fma_peak']:.1f}% of the 2 cores' FMA peak (small matrices: call "
                 "overhead, not arithmetic, bounds it).")
    return "\n".join(lines)
