"""Photos: scoring ids and uploads with the catalog's backend, and thumbnails.

Decoding is the memory-heavy step (a 24-megapixel PNG takes ~150 MB while it decodes), so one
photo decodes at a time per replica, and uploads and thumbnails run in a pool of their own
(`pool`), never in the default one that health checks share. Files are read only under the
photos root (`safe_relative_path`); uploads are kept in the tenant's namespace of the store.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np

from export.preprocess import DecodeError, decode
from serving.feature_table.store import FeatureRows
from serving.online.api_models import (
    MAX_UPLOAD_PIXELS,
    THUMBNAIL_SIZES,
    check_image_ids,
)
from serving.online.catalog import Catalog, tenant_key
from serving.online.errors import Conflict, InvalidInput, NotFound, TooLarge, Unavailable
from serving.online.user_store import DEFAULT_TENANT

UPLOAD_PREFIX = "upload:"


def safe_relative_path(root: Path, image_id: str) -> Path | None:
    """root / image_id when that stays inside root (no '..', no absolute path, no symlink escape)."""
    if not image_id or "\0" in image_id or "\\" in image_id:
        return None
    rel = PurePosixPath(image_id)
    if rel.is_absolute() or any(part in ("..", "") for part in rel.parts):
        return None
    try:
        root = root.resolve()
        candidate = (root / rel).resolve()
        return candidate if candidate.is_relative_to(root) and candidate.is_file() else None
    except (OSError, ValueError):  # a name too long for the file system, a loop of links
        return None


class Photos:
    """Photo scoring and thumbnails over the catalog that `catalog()` returns at each call's start."""

    def __init__(self, catalog: Callable[[], Catalog], photos_root: str | None, thumbnail_dir: str | None):
        self._catalog = catalog
        self.photos_root = Path(photos_root).resolve() if photos_root else None
        self.thumbnail_dir = Path(thumbnail_dir) if thumbnail_dir else None
        self._decode_slot = threading.BoundedSemaphore(1)
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pam-photos")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def reachable(self, image_id: str) -> Path | None:
        return safe_relative_path(self.photos_root, image_id) if self.photos_root is not None else None

    def score_files(self, catalog: Catalog, image_ids: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        """Score ids missing from the store whose files are reachable; returns (scored, failed)."""
        if catalog.backend is None:
            return [], {}
        ok_ids, images, failed = [], [], {}
        for image_id in image_ids:
            path = self.reachable(image_id)
            if path is None:
                continue
            try:
                with self._decode_slot:
                    images.append(decode(path.read_bytes(), max_pixels=MAX_UPLOAD_PIXELS))
                ok_ids.append(image_id)
            except DecodeError as exc:
                failed[image_id] = str(exc)
            except OSError as exc:
                failed[image_id] = f"unreadable: {exc.strerror or exc}"
        if ok_ids:
            features = catalog.backend.score(np.stack(images))
            catalog.store.add_online(ok_ids, features, model_version=catalog.backend.model_version)
        if failed:
            catalog.store.add_online(list(failed), None, errors=list(failed.values()),
                                     model_version=catalog.model_version)
        return ok_ids, failed

    def known_or_scored(self, catalog: Catalog, image_ids: list[str], tenant: str) -> int:
        """Make every id known to the store (scoring reachable files); NotFound lists the rest."""
        _, missing = catalog.lookup(image_ids, tenant)
        if not missing:
            return 0
        scored, _ = self.score_files(catalog, missing)
        scored_set = set(scored)
        still = [i for i in missing if i not in scored_set]
        if still:
            hint = " and no file for them under the photos root" if self.photos_root else ""
            raise NotFound("unknown_images", f"{len(still)} image ids are not in the feature store "
                           f"(model version {catalog.model_version}){hint}", unknown=still[:100])
        return len(scored)

    def score_ids(self, image_ids: list[str], include_features: bool = False, tenant: str = DEFAULT_TENANT) -> dict:
        """Scores of checked, normalized ids (unknown ids whose files are reachable scored now)."""
        catalog = self._catalog()
        scored_now = set()
        _, missing = catalog.lookup(image_ids, tenant)
        if missing:
            scored, _ = self.score_files(catalog, missing)
            scored_now = set(scored)
            unknown = [i for i in missing if i not in scored_now and self.reachable(i) is None]
            if unknown:
                raise NotFound("unknown_images", f"{len(unknown)} image ids are neither in the feature store "
                               "nor reachable as files", unknown=unknown[:100])
        found, _ = catalog.lookup(image_ids, tenant)
        by_id = {image_id: k for k, image_id in enumerate(found.image_ids)}
        results = []
        for image_id in image_ids:
            k = by_id.get(image_id)
            if k is None:
                results.append({"image_id": image_id, "source": "failed",
                                "error": found.failed.get(image_id, "not scored")})
                continue
            results.append(self.photo_row(found, k, "scored" if image_id in scored_now else "store",
                                           include_features))
        return {"model_version": catalog.model_version, "results": results}

    @staticmethod
    def photo_row(rows: FeatureRows, k: int, source: str, include_features: bool) -> dict:
        row = {"image_id": rows.image_ids[k], "aes_score": float(rows.aes_score[k]),
               "attributes": rows.attributes[k].tolist(), "content": rows.content[k].tolist(),
               "source": source}
        if include_features:
            row["aes_feat"] = rows.aes_feat[k].tolist()
        return row

    def score_uploads(self, uploads: Sequence[tuple[str, bytes, str | None]], include_features: bool = False,
                      tenant: str = DEFAULT_TENANT) -> dict:
        """uploads: (file name, bytes, image_id or None). New photos are scored and kept online, in
        the tenant's namespace; an id that names a catalog photo is refused (Conflict), a photo of
        more than MAX_UPLOAD_PIXELS pixels too (TooLarge)."""
        catalog = self._catalog()
        if catalog.backend is None:
            raise Unavailable("no_backend", "this service has no feature backend configured (start it "
                              "with a model), so it cannot score uploaded photos")
        named = [(k, image_id) for k, (_, _, image_id) in enumerate(uploads) if image_id is not None]
        if named:
            given = check_image_ids([i for _, i in named], "image_ids", len(named))
            uploads = list(uploads)
            for (k, _), image_id in zip(named, given, strict=True):
                uploads[k] = (uploads[k][0], uploads[k][1], image_id)
            in_catalog, _ = catalog.store.lookup(given)
            taken = sorted(set(in_catalog.image_ids) | set(in_catalog.failed)
                           | {i for i in given if self.reachable(i) is not None})
            if taken:
                raise Conflict("image_id_taken", f"{len(taken)} image ids name catalog photos, which an "
                               "upload never replaces: choose other ids", taken=taken[:100])
        rows: list[dict | None] = [None] * len(uploads)
        ids, images, positions = [], [], []
        for k, (name, data, image_id) in enumerate(uploads):
            image_id = image_id or UPLOAD_PREFIX + hashlib.sha256(data).hexdigest()[:32]
            try:
                with self._decode_slot:
                    image = decode(data, max_pixels=MAX_UPLOAD_PIXELS)
            except DecodeError as exc:
                if exc.reason == "too_many_pixels":
                    raise TooLarge("too_many_pixels", f"{name}: {exc.detail or exc}; at most "
                                   f"{MAX_UPLOAD_PIXELS} pixels are accepted", limit=MAX_UPLOAD_PIXELS) from None
                rows[k] = {"image_id": image_id, "source": "failed", "error": f"{name}: {exc}"}
                continue
            ids.append(image_id)
            images.append(image)
            positions.append(k)
            self.save_thumbnail(tenant, image_id, data)
        if ids:
            keys = [tenant_key(tenant, i) for i in ids]
            _, missing = catalog.store.lookup(keys)
            missing_set = set(missing)
            first = {key: i for i, key in reversed(list(enumerate(keys)))}
            new = [i for key, i in first.items() if key in missing_set]
            if new:
                features = catalog.backend.score(np.stack([images[i] for i in new]))
                catalog.store.add_online([keys[i] for i in new], features, model_version=catalog.backend.model_version)
            found, _ = catalog.lookup(ids, tenant)
            by_id = {image_id: j for j, image_id in enumerate(found.image_ids)}
            new_ids = {ids[i] for i in new}
            for image_id, k in zip(ids, positions, strict=True):
                j = by_id.get(image_id)
                if j is None:
                    rows[k] = {"image_id": image_id, "source": "failed",
                               "error": found.failed.get(image_id, "known but not scored")}
                else:
                    rows[k] = self.photo_row(found, j, "scored" if image_id in new_ids else "store",
                                              include_features)
        if rows and all(r["source"] == "failed" for r in rows):
            raise InvalidInput("undecodable_photos", "no uploaded photo could be decoded: "
                               + "; ".join(r["error"] for r in rows), failed=[r["error"] for r in rows])
        return {"model_version": catalog.model_version, "results": rows}

    def _thumb_path(self, tenant: str, image_id: str) -> Path | None:
        if self.thumbnail_dir is None:
            return None
        return self.thumbnail_dir / (hashlib.sha256(tenant_key(tenant, image_id).encode()).hexdigest() + ".jpg")

    def save_thumbnail(self, tenant: str, image_id: str, data: bytes) -> None:
        path = self._thumb_path(tenant, image_id)
        if path is None or path.exists():
            return
        try:
            jpeg = make_thumbnail(data, max(THUMBNAIL_SIZES))
        except (DecodeError, OSError, ValueError):
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp-{threading.get_ident()}")
        tmp.write_bytes(jpeg)
        tmp.replace(path)

    def thumbnail(self, image_id: str, size: int, tenant: str = DEFAULT_TENANT) -> tuple[bytes, bool]:
        """(JPEG, shared): a catalog file's thumbnail is the same for everyone (shared=True); an
        uploaded photo's is its tenant's own."""
        if size not in THUMBNAIL_SIZES:
            raise InvalidInput("invalid_size", f"size must be one of {list(THUMBNAIL_SIZES)}")
        image_id = check_image_ids([image_id], "image_id", 1)[0]
        path = self.reachable(image_id)
        kept = self._thumb_path(tenant, image_id) if path is None else None
        if path is not None:
            data = path.read_bytes()
        elif kept is not None and kept.is_file():
            data = kept.read_bytes()
        else:
            raise NotFound("no_file", f"no file is reachable for image id {image_id!r} (the service "
                           "serves files under its photos root and photos uploaded to it)",
                           unknown=[image_id])
        try:
            with self._decode_slot:
                return make_thumbnail(data, size), path is not None
        except DecodeError as exc:
            kind = TooLarge if exc.reason == "too_many_pixels" else InvalidInput
            raise kind("undecodable_photo", f"{image_id!r} cannot be decoded: {exc}") from None


def make_thumbnail(data: bytes, size: int) -> bytes:
    """A JPEG whose longer side is `size` (aspect kept, EXIF orientation applied)."""
    from PIL import Image, ImageOps

    from export.preprocess import MAX_PIXELS

    try:
        image = Image.open(io.BytesIO(data))
        if image.size[0] * image.size[1] > MAX_PIXELS:
            raise DecodeError("too_many_pixels", f"{image.size[0]}x{image.size[1]}")
        image.draft("RGB", (size, size))
        image.thumbnail((size, size))  # in place, before turning upright: never a full-size copy
        ImageOps.exif_transpose(image, in_place=True)
        if image.mode != "RGB":
            background = Image.new("RGB", image.size, (255, 255, 255))
            rgba = image.convert("RGBA")
            background.paste(rgba, mask=rgba.getchannel("A"))
            image = background
        out = io.BytesIO()
        image.save(out, "JPEG", quality=85)
        return out.getvalue()
    except DecodeError:
        raise
    except Exception as exc:  # Pillow raises many types for bad bytes
        raise DecodeError("corrupt", str(exc) or type(exc).__name__) from None
