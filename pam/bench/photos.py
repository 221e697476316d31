"""The photos a benchmark reads: --photos, else ../shared/photos, else the wheels' sample photos."""

from __future__ import annotations

import tempfile
from pathlib import Path

SAMPLE_ALBUM_SIZE = 120


def bench_photos(photos: Path | None, bench: str) -> Path:
    """A folder of photos for `pam bench BENCH`; one line, never a traceback, when there is none."""
    from pam.demo.album import AlbumError, sample_album, shared_photos_dir

    if photos is not None:
        if not Path(photos).is_dir():
            raise SystemExit(f"pam bench {bench}: --photos {photos} is not a folder")
        return Path(photos)
    shared = shared_photos_dir()
    if shared is not None:
        return shared
    folder = Path(tempfile.gettempdir()) / "pam-bench-sample-photos"
    try:
        return sample_album(folder, SAMPLE_ALBUM_SIZE, seed=0).root
    except AlbumError as exc:
        raise SystemExit(f"pam bench {bench}: no ../shared/photos and no sample photos ({exc}); "
                         "pass --photos DIR") from None
