"""The trunk on the five crops, with the early layers computed once per image, exactly.

The four corner crops and the center crop cover the 256x256 image 3.8 times over, and the early,
high-resolution layers are the least efficient part of the trunk. A crop's early activations are
the whole image's, except in a band along each of its sides that lies inside the image: there
the crop's own zero padding replaces the neighbouring pixels. So the early layers (the backbone's
"prefix") run once on the whole image, each crop takes its window of that map, and each band is
recomputed on a thin strip of the crop, cut so that the rows taken from it never see the strip's
own artificial edge. The result equals running every crop separately (up to float summation
order; tests compare both).

Which rows form a band follows from the prefix's geometry: with total stride S, output row i of
a crop depends on input rows [S*i - before, S*i + after] (`Reach`); the row is exact when that
range lies inside the crop.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Reach:
    """Geometry of a stack of layers along one axis: output i <- input [S*i - before, S*i + after]."""

    stride: int = 1
    before: int = 0
    after: int = 0

    @classmethod
    def of(cls, layers: Iterable[tuple[int, int, int]]) -> Reach:
        """From (kernel, stride, padding before) of each spatial layer, input to output."""
        reach = cls()
        for kernel, stride, pad in layers:
            s = reach.stride
            reach = cls(s * stride, reach.before + s * pad, reach.after + s * (kernel - 1 - pad))
        return reach

    def bands(self, size: int) -> tuple[int, int]:
        """(rows at the start, rows at the end) of a size-wide crop's map that see its padding."""
        n = size // self.stride
        start = math.ceil(self.before / self.stride)
        end = sum(1 for i in range(n) if self.stride * i + self.after > size - 1)
        return start, end

    def strip(self, size: int) -> int:
        """Input rows of a border strip whose band rows are all exact."""
        start, end = self.bands(size)
        need = max(self.stride * (start - 1) + self.after + 1 if start else 0,
                   self.stride * (end + start) if end else 0)
        return self.stride * math.ceil(need / self.stride)


def five_crop_maps(prefix, rest, reach: Reach, x: torch.Tensor,
                   offsets: Sequence[tuple[int, int]], size: int) -> torch.Tensor:
    """rest(prefix(crop)) for every crop of x [B, C, H, W], crop-major [len(offsets) * B, ...]."""
    s = reach.stride
    height, width = x.shape[2], x.shape[3]
    if size % s or height % s or width % s or any(top % s or left % s for top, left in offsets):
        raise ValueError(f"crops must align with the prefix's stride {s}")
    n = size // s
    start, end = reach.bands(size)
    h = reach.strip(size)
    m = h // s
    full = prefix(x)
    rows, cols = [], []  # ((crop, side), strip of the normalised image)
    for c, (top, left) in enumerate(offsets):
        if top > 0 and start:
            rows.append(((c, "top"), x[:, :, top:top + h, left:left + size]))
        if top + size < height and end:
            rows.append(((c, "bottom"), x[:, :, top + size - h:top + size, left:left + size]))
        if left > 0 and start:
            cols.append(((c, "left"), x[:, :, top:top + size, left:left + h]))
        if left + size < width and end:
            cols.append(((c, "right"), x[:, :, top:top + size, left + size - h:left + size]))
    batch = x.shape[0]

    def run(strips):
        if not strips:
            return {}
        out = prefix(torch.cat([strip for _, strip in strips], 0))
        return {key: out[i * batch:(i + 1) * batch] for i, (key, _) in enumerate(strips)}

    by_row, by_col = run(rows), run(cols)
    maps = []
    for c, (top, left) in enumerate(offsets):
        window = full[:, :, top // s:top // s + n, left // s:left // s + n]
        window = torch.cat(_parts(window, by_col.get((c, "left")), by_col.get((c, "right")),
                                  start, end, n, m, dim=3), 3)
        window = torch.cat(_parts(window, by_row.get((c, "top")), by_row.get((c, "bottom")),
                                  start, end, n, m, dim=2), 2)
        maps.append(window)
    return rest(torch.cat(maps, 0))


def _parts(window, first, last, start, end, n, m, dim):
    """The window along `dim`, its first `start` and last `end` rows taken from the strips."""
    def take(t, a, b):
        return t.narrow(dim, a, b - a)

    parts = [take(first, 0, start) if first is not None else take(window, 0, start),
             take(window, start, n - end),
             take(last, m - end, m) if last is not None else take(window, n - end, n)]
    return [p for p in parts if p.shape[dim] > 0]
