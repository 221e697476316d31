"""Rating data sets: FLICKR-AES (UAD), AADB per-rater labels, personal albums (PAD / REAL-CUR),
and the feature matrix that lines image ids up with the feature contract's columns.

Every problem in a file is reported as `DataError("<file>:<line>: <problem>")`. Reading Parquet
feature tables happens in the CLI (pyarrow); this module gets plain arrays.

FLICKR-AES: a CSV `worker, imagePair, score` (1-5 integers; the header's spacing is ignored),
the list of test workers (one per line), and optionally the ground-truth check images
(`imagePair, score` with scores 1 or 5) whose ratings sit in the same CSV: then each worker's
performance WP_i is the mean of eq. 1 over the check images they rated, workers below `min_wp`
(random labellers) are excluded as in section 3, and IM_j is the WP-weighted mean.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from personalize.features import AES_FEAT_DIM, N_ATTRIBUTES, N_CONTENT, W_AES_PAPER

MIN_WP = 0.7  # a uniform random labeller's expected WP on 1-or-5 check images is 0.5


class DataError(ValueError):
    """A data file is malformed; the message names the file, the line and the problem."""


# --- CSV reading -----------------------------------------------------------------------------
def _read_rows(path: Path, columns: dict[str, Sequence[str]]) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV with a header; `columns` maps our name -> accepted header names."""
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc.strerror or exc})") from exc
    with handle:
        sample = handle.read(4096)
        handle.seek(0)
        delimiter = "\t" if "\t" in sample.split("\n", 1)[0] else ","
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}:1: empty file (expected a header)") from None
        except csv.Error as exc:
            raise DataError(f"{path}:1: {exc}") from None
        names = [h.strip().lower() for h in header]
        where = {}
        for ours, accepted in columns.items():
            hits = [names.index(a.lower()) for a in accepted if a.lower() in names]
            if not hits:
                raise DataError(f"{path}:1: missing column {accepted[0]!r} (header is {header!r})")
            where[ours] = hits[0]
        rows = []
        try:
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) < len(header):
                    raise DataError(f"{path}:{line}: {len(row)} fields, expected {len(header)}")
                rows.append((line, {ours: row[i].strip() for ours, i in where.items()}))
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}: {exc}") from None
    if not rows:
        raise DataError(f"{path}: no data rows")
    return rows


def _score(path: Path, line: int, text: str, integer: bool, lo: float = 1.0, hi: float = 5.0) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path}:{line}: score {text!r} is not a number") from None
    if not np.isfinite(value) or not lo <= value <= hi:
        raise DataError(f"{path}:{line}: score {text!r} is outside [{lo:g}, {hi:g}]")
    if integer and value != int(value):
        raise DataError(f"{path}:{line}: score {text!r} is not an integer")
    return value


def _nonempty(path: Path, line: int, text: str, what: str) -> str:
    if not text:
        raise DataError(f"{path}:{line}: empty {what}")
    return text


# --- ratings ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ratings:
    """One row per (worker, image) rating."""

    workers: np.ndarray  # str
    images: np.ndarray  # str
    scores: np.ndarray  # float64

    def __len__(self) -> int:
        return self.scores.shape[0]

    def by_worker(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """worker -> (image ids, scores), in file order."""
        order = np.argsort(self.workers, kind="stable")
        w = self.workers[order]
        starts = np.flatnonzero(np.r_[True, w[1:] != w[:-1]])
        ends = np.r_[starts[1:], w.size]
        return {str(w[s]): (self.images[order[s:e]], self.scores[order[s:e]]) for s, e in zip(starts, ends, strict=True)}

    def subset(self, mask: np.ndarray) -> Ratings:
        return Ratings(self.workers[mask], self.images[mask], self.scores[mask])


def read_ratings(path, *, integer_scores: bool = True,
                 columns: dict[str, Sequence[str]] | None = None) -> Ratings:
    columns = columns or {"worker": ("worker", "workerID", "worker_id", "rater"),
                          "image": ("imagePair", "image", "image_id", "imageName"),
                          "score": ("score", "rating")}
    path = Path(path)
    rows = _read_rows(path, columns)
    seen: dict[tuple[str, str], int] = {}
    workers, images, scores = [], [], []
    for line, r in rows:
        worker = _nonempty(path, line, r["worker"], "worker")
        image = _nonempty(path, line, r["image"], "image id")
        if (worker, image) in seen:
            raise DataError(f"{path}:{line}: worker {worker!r} rated {image!r} again "
                            f"(first on line {seen[worker, image]})")
        seen[worker, image] = line
        workers.append(worker)
        images.append(image)
        scores.append(_score(path, line, r["score"], integer_scores))
    return Ratings(np.asarray(workers), np.asarray(images), np.asarray(scores, dtype=np.float64))


def performance_score(worker_score: np.ndarray, true_score: np.ndarray) -> np.ndarray:
    """IS of eq. 1: 1 if |WS - TS| < 2, 0.5 if == 2, 0 if > 2."""
    diff = np.abs(np.asarray(worker_score, dtype=np.float64) - np.asarray(true_score, dtype=np.float64))
    return np.where(diff < 2, 1.0, np.where(diff == 2, 0.5, 0.0))


@dataclass
class FlickrAES:
    """A FLICKR-AES-format data set (section 3): ratings, the test-worker split, check images."""

    ratings: Ratings  # ratings of non-check images by retained workers
    test_workers: frozenset[str]
    worker_performance: dict[str, float]  # WP_i (1.0 for every worker when no check images)
    excluded_workers: frozenset[str] = field(default_factory=frozenset)
    source: str = ""

    @property
    def workers(self) -> list[str]:
        return sorted(set(self.ratings.workers.tolist()))

    @property
    def train_workers(self) -> list[str]:
        return [w for w in self.workers if w not in self.test_workers]

    def worker_ratings(self, worker: str) -> tuple[np.ndarray, np.ndarray]:
        mask = self.ratings.workers == worker
        if not mask.any():
            raise KeyError(f"no ratings for worker {worker!r}")
        return self.ratings.images[mask], self.ratings.scores[mask]

    def weighted_means(self, workers: Iterable[str] | None = None) -> tuple[np.ndarray, ...]:
        """(image ids, IM_j, weighted std, n raters): the WP-weighted mean of section 3 and
        Table 1's weighted standard deviation (NaN for an image with one rater)."""
        r = self.ratings
        if workers is not None:
            r = r.subset(np.isin(r.workers, np.asarray(list(workers))))
        wp = np.asarray([self.worker_performance.get(w, 1.0) for w in r.workers.tolist()])
        images, inverse = np.unique(r.images, return_inverse=True)
        w_sum = np.bincount(inverse, weights=wp, minlength=images.size)
        n = np.bincount(inverse, minlength=images.size)
        im = np.bincount(inverse, weights=wp * r.scores, minlength=images.size) / np.maximum(w_sum, 1e-300)
        dev = np.bincount(inverse, weights=wp * (r.scores - im[inverse]) ** 2, minlength=images.size)
        with np.errstate(invalid="ignore", divide="ignore"):
            std = np.sqrt(dev / ((n - 1) / n * w_sum))
        std[n < 2] = np.nan
        return images, im, std, n


def _read_worker_list(path: Path) -> frozenset[str]:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc.strerror or exc})") from exc
    workers = {line.strip().split(",")[0].strip() for line in lines if line.strip()}
    workers.discard("worker")
    if not workers:
        raise DataError(f"{path}: no worker ids")
    return frozenset(workers)


def load_flickr_aes(csv_path, test_workers=None, check_images=None, *, min_wp: float = MIN_WP,
                    integer_scores: bool = True) -> FlickrAES:
    """Load a FLICKR-AES-format data set.

    csv_path: `worker, imagePair, score` ratings (check-image ratings may be included).
    test_workers: a file with one worker id per line, or an iterable of ids (default: none).
    check_images: a CSV `imagePair, score` of ground-truth images (scores 1 or 5), or None.
    Workers whose WP is below `min_wp` are excluded (section 3's random labellers).
    """
    csv_path = Path(csv_path)
    ratings = read_ratings(csv_path, integer_scores=integer_scores)
    if test_workers is None:
        tests = frozenset()
    elif isinstance(test_workers, (str, Path)):
        tests = _read_worker_list(Path(test_workers))
    else:
        tests = frozenset(str(w) for w in test_workers)
    truth = None
    if check_images is not None:
        check_path = Path(check_images)
        truth = {}
        for line, r in _read_rows(check_path, {"image": ("imagePair", "image", "image_id"),
                                              "score": ("score", "TS")}):
            truth[_nonempty(check_path, line, r["image"], "image id")] = _score(check_path, line, r["score"], True)
    return flickr_aes_from_ratings(ratings, tests, truth, min_wp=min_wp, source=str(csv_path))


def flickr_aes_from_ratings(ratings: Ratings, test_workers: Iterable[str] = (),
                            check_truth: dict[str, float] | None = None, *, min_wp: float = MIN_WP,
                            source: str = "") -> FlickrAES:
    """Section 3's cleaning on ratings already in memory: WP from the check images, workers
    below `min_wp` excluded, check-image rows removed."""
    tests = frozenset(str(w) for w in test_workers)
    unknown = tests - set(ratings.workers.tolist())
    if unknown:
        raise DataError(f"{source or 'ratings'}: test workers with no ratings: {sorted(unknown)[:5]}")
    all_workers = sorted(set(ratings.workers.tolist()))
    wp = dict.fromkeys(all_workers, 1.0)
    excluded: frozenset[str] = frozenset()
    if check_truth:
        is_check = np.isin(ratings.images, np.asarray(list(check_truth)))
        checks = ratings.subset(is_check)
        ts = np.asarray([check_truth[i] for i in checks.images.tolist()])
        perf = performance_score(checks.scores, ts)
        workers, inverse = np.unique(checks.workers, return_inverse=True)
        mean_perf = np.bincount(inverse, weights=perf) / np.bincount(inverse)
        for w in all_workers:
            wp[w] = float("nan")  # rated no check image: cannot be judged, kept
        wp.update(zip(workers.tolist(), mean_perf.tolist(), strict=True))
        excluded = frozenset(w for w, p in wp.items() if p < min_wp)
        ratings = ratings.subset(~is_check & ~np.isin(ratings.workers, np.asarray(sorted(excluded) or [""])))
        tests = tests - excluded
        wp = {w: (1.0 if np.isnan(p) else p) for w, p in wp.items()}
    return FlickrAES(ratings=ratings, test_workers=tests, worker_performance=wp,
                     excluded_workers=excluded, source=source)


def load_aadb_raters(csv_path, *, integer_scores: bool = True) -> Ratings:
    """AADB per-rater labels as a CSV `imageName, workerID, score` (AADB's 1-5 scale), e.g.
    exported from AADBinfo.mat. Header names are matched case-insensitively."""
    return read_ratings(csv_path, integer_scores=integer_scores,
                        columns={"worker": ("workerID", "worker", "rater"),
                                 "image": ("imageName", "image", "imagePair", "image_id"),
                                 "score": ("score", "aesthetics", "rating")})


def load_personal_albums(root) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Personal albums (PAD / REAL-CUR): owner -> (image ids, owner's scores).

    `root` is either a folder with one sub-folder per owner holding `scores.csv`
    (`image, score`; image ids become `<owner>/<image>`, the path relative to root), or a folder
    of `<owner>.csv` files, or a single CSV `owner, image, score`.
    """
    root = Path(root)
    cols = {"image": ("image", "imagePair", "image_id", "file"), "score": ("score", "rating")}
    albums: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def read_album(path: Path, owner: str, prefix: str) -> None:
        images, scores, seen = [], [], {}
        for line, r in _read_rows(path, cols):
            image = _nonempty(path, line, r["image"], "image id")
            if image in seen:
                raise DataError(f"{path}:{line}: image {image!r} scored again (first on line {seen[image]})")
            seen[image] = line
            images.append(prefix + image)
            scores.append(_score(path, line, r["score"], integer=False))
        albums[owner] = (np.asarray(images), np.asarray(scores, dtype=np.float64))

    if root.is_file():
        r = read_ratings(root, integer_scores=False,
                         columns={"worker": ("owner", "user", "worker"), **cols})
        return r.by_worker()
    if not root.is_dir():
        raise DataError(f"{root}: no such file or folder")
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if (sub / "scores.csv").is_file():
            read_album(sub / "scores.csv", sub.name, sub.name + "/")
    for path in sorted(root.glob("*.csv")):
        read_album(path, path.stem, "")
    if not albums:
        raise DataError(f"{root}: no albums (expected <owner>/scores.csv or <owner>.csv)")
    return albums


# --- features --------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureMatrix:
    """Feature-contract columns for a set of images, indexable by image id."""

    image_ids: np.ndarray  # str [N]
    aes_score: np.ndarray  # [N]
    aes_feat: np.ndarray  # [N, 176]
    attributes: np.ndarray  # [N, 10]
    content: np.ndarray  # [N, 10]

    def __post_init__(self):
        n = self.image_ids.shape[0]
        shapes = {"aes_score": (n,), "aes_feat": (n, AES_FEAT_DIM), "attributes": (n, N_ATTRIBUTES),
                  "content": (n, N_CONTENT)}
        for name, shape in shapes.items():
            if getattr(self, name).shape != shape:
                raise DataError(f"feature table: {name} has shape {getattr(self, name).shape}, expected {shape}")
        if np.unique(self.image_ids).size != n:
            raise DataError("feature table: duplicate image ids")
        object.__setattr__(self, "_row", {str(k): i for i, k in enumerate(self.image_ids.tolist())})

    def rows(self, ids: Iterable[str]) -> np.ndarray:
        ids = [str(i) for i in ids]
        missing = [i for i in ids if i not in self._row]
        if missing:
            raise DataError(f"feature table has no row for {len(missing)} rated image(s), e.g. {missing[:3]}")
        return np.fromiter((self._row[i] for i in ids), dtype=np.int64, count=len(ids))

    def X(self, rows=None) -> np.ndarray:
        """[x, aes_score] (21 columns), PAM's input."""
        sl = slice(None) if rows is None else rows
        return np.hstack([self.attributes[sl], self.content[sl], self.aes_score[sl, None]]).astype(np.float64)

    def V(self, rows=None, w_aes: float = W_AES_PAPER) -> np.ndarray:
        """v = [w_aes * aes_feat, aes_score] (177 columns), Active-PAM's visual vector."""
        sl = slice(None) if rows is None else rows
        return np.hstack([w_aes * self.aes_feat[sl], self.aes_score[sl, None]]).astype(np.float64)
