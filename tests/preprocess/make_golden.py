"""Regenerate golden.json: `.venv/bin/python -m tests.preprocess.make_golden`.

Run it only after a deliberate change to export/preprocess.py (or a Pillow upgrade that changes
lossless output), check the diff of golden.json, and say why in the commit message.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import PIL

from export.preprocess import DecodeError, decode
from tests.preprocess.cases import build_cases

GOLDEN = Path(__file__).with_name("golden.json")


def block_means(array: np.ndarray, blocks: int = 8) -> np.ndarray:
    """int [blocks, blocks, 3]: rounded means of 32x32 blocks of the decoded image."""
    size = array.shape[0] // blocks
    means = array.reshape(blocks, size, blocks, size, 3).mean(axis=(1, 3))
    return np.floor(means + 0.5).astype(int)


def blocks_to_text(blocks: np.ndarray) -> list[str]:
    """One string per block row, "r,g,b r,g,b ...": readable in a diff."""
    return [" ".join(",".join(str(v) for v in pixel) for pixel in row) for row in blocks]


def blocks_from_text(rows: list[str]) -> np.ndarray:
    return np.array([[[int(v) for v in pixel.split(",")] for pixel in row.split()] for row in rows])


def record(case) -> dict:
    options = {"max_pixels": case.max_pixels} if case.max_pixels else {}
    try:
        array = decode(case.data, **options)
    except DecodeError as exc:
        return {"reason": exc.reason}
    return {"sha256": hashlib.sha256(array.tobytes()).hexdigest(), "lossless": case.lossless,
            "blocks": blocks_to_text(block_means(array))}


def main() -> None:
    golden = {"_about": f"decode() outputs of tests/preprocess/cases.py, Pillow {PIL.__version__}; "
                        "regenerate with python -m tests.preprocess.make_golden",
              **{name: record(case) for name, case in build_cases().items()}}
    GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {len(golden) - 1} cases to {GOLDEN}")


if __name__ == "__main__":
    main()
