"""JPEG decoding on the GPU (nvJPEG through torchvision.io.decode_jpeg, batched) to the decode
contract's uint8 [256, 256, 3], with export.preprocess.decode as the reference and the fallback.

Per photo, a header read on the CPU (Pillow parses the markers, decodes no pixels) routes it:
baseline or progressive JPEG, RGB or greyscale, within the pixel limit and ending in an EOI marker
goes to the GPU; everything else (PNG, CMYK JPEG, truncated files, bombs, undecodable bytes)
takes the CPU path, which also gives the same DecodeError reasons. A GPU batch that fails falls
back photo by photo.

On the GPU: decode at full size (no draft mode: nvJPEG has no DCT scaling), the EXIF orientation
applied as a flip or transpose, then a resize to 256x256 with the antialiased bilinear filter
(torch's matches Pillow's triangle filter) rounded to uint8. Differences from the CPU path:
Pillow's draft mode (photos at least 512 px on their short side are decoded at 1/2-1/8 scale by
libjpeg first) and nvJPEG's own IDCT and chroma upsampling; tests/export/test_gpu_decode.py
measures the first on CPU-decoded tensors, the device check the whole on a GPU.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .preprocess import MAX_PIXELS, WARP_SIZE, DecodeError, decode

# EXIF orientation -> how the stored pixels become upright (Pillow's exif_transpose, on [C, H, W])
_ORIENT: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    2: lambda x: x.flip(-1),
    3: lambda x: x.flip(-1, -2),
    4: lambda x: x.flip(-2),
    5: lambda x: x.transpose(-1, -2),
    6: lambda x: torch.rot90(x, -1, (-2, -1)),
    7: lambda x: x.transpose(-1, -2).flip(-1, -2),
    8: lambda x: torch.rot90(x, 1, (-2, -1)),
}
GPU_MODES = ("RGB", "L")  # what nvJPEG turns into RGB itself; CMYK and YCCK go to the CPU


def torchvision_unavailable_reason() -> str | None:
    """None when torchvision.io.decode_jpeg can be used beside this torch; else why not."""
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except Exception as exc:  # a torchvision built for another torch fails in many ways
        return f"torchvision cannot be imported beside torch {torch.__version__}: {type(exc).__name__}: {exc}"
    return None


@dataclass
class Route:
    gpu: bool
    orientation: int = 1


def route(data: bytes, max_pixels: int = MAX_PIXELS) -> Route:
    """Whether the GPU can decode these bytes as the CPU path would, from the header alone."""
    if not data or not data.startswith(b"\xff\xd8\xff") or not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return Route(False)
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if image.format != "JPEG" or image.mode not in GPU_MODES or width * height > max_pixels:
                return Route(False)
            try:
                orientation = int(image.getexif().get(0x0112, 1))
            except Exception:  # a malformed EXIF block: the CPU path ignores it too
                orientation = 1
    except Exception:
        return Route(False)
    return Route(True, orientation if orientation in _ORIENT else 1)


def warp(image: torch.Tensor, orientation: int = 1, size: int = WARP_SIZE) -> torch.Tensor:
    """uint8 [C, H, W] (C = 1 or 3, as decoded) -> uint8 [size, size, 3], upright, antialiased
    bilinear resize as Pillow's. Runs where `image` is."""
    if orientation in _ORIENT:
        image = _ORIENT[orientation](image)
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    x = image[None].float()
    if tuple(x.shape[-2:]) != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                            align_corners=False)
    return x[0].round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)


def nvjpeg_decoder(device: str | torch.device) -> Callable[[list[bytes]], list[torch.Tensor]]:
    """torchvision's batched decode_jpeg on `device`: bytes -> uint8 [3, H, W] tensors there."""
    from torchvision.io import ImageReadMode, decode_jpeg

    def run(datas: list[bytes]) -> list[torch.Tensor]:
        encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))

    return run


def pillow_full_decoder(datas: list[bytes]) -> list[torch.Tensor]:
    """What nvJPEG does, on the CPU with Pillow: the whole JPEG at full size (no draft mode), no
    EXIF orientation, RGB [3, H, W]. The reference the GPU path is tested with where no GPU is."""
    out = []
    for data in datas:
        with Image.open(io.BytesIO(data)) as image:
            out.append(torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous())
    return out


class BatchDecoder:
    """bytes -> uint8 [B, 256, 256, 3] on `device`, with a per-photo error ("" when decoded).

    `jpeg_decoder` decodes a list of JPEGs to [C, H, W] tensors (default: nvJPEG on the device;
    tests pass pillow_full_decoder). Rows of photos that failed are zeros."""

    def __init__(self, device: str | torch.device = "cuda",
                 jpeg_decoder: Callable[[list[bytes]], list[torch.Tensor]] | None = None,
                 max_pixels: int = MAX_PIXELS):
        self.device = torch.device(device)
        self.max_pixels = max_pixels
        self._jpeg = jpeg_decoder or nvjpeg_decoder(self.device)
        self.counts = {"gpu": 0, "cpu": 0, "gpu_fallback": 0, "failed": 0}

    def __call__(self, datas: Sequence[bytes]) -> tuple[torch.Tensor, list[str]]:
        n = len(datas)
        out = torch.zeros((n, WARP_SIZE, WARP_SIZE, 3), dtype=torch.uint8, device=self.device)
        errors = [""] * n
        routes = [route(d, self.max_pixels) for d in datas]
        gpu = [i for i, r in enumerate(routes) if r.gpu]
        cpu = [i for i, r in enumerate(routes) if not r.gpu]
        if gpu:
            try:
                decoded = self._jpeg([datas[i] for i in gpu])
            except Exception:  # one bad photo fails the whole batch: retry one at a time
                decoded = []
                for i in gpu:
                    try:
                        decoded.append(self._jpeg([datas[i]])[0])
                    except Exception:
                        decoded.append(None)
            for i, image in zip(gpu, decoded, strict=True):
                if image is None:
                    cpu.append(i)
                    self.counts["gpu_fallback"] += 1
                    continue
                out[i] = warp(image.to(self.device), routes[i].orientation)
                self.counts["gpu"] += 1
        for i in sorted(cpu):
            try:
                out[i] = torch.from_numpy(decode(datas[i], max_pixels=self.max_pixels)).to(self.device)
                self.counts["cpu"] += 1
            except DecodeError as exc:
                errors[i] = str(exc)
                self.counts["failed"] += 1
        return out, errors
