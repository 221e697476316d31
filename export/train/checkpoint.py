"""Checkpoints as safetensors (tensors + a JSON string of run state; no pickle anywhere).

A checkpoint holds the whole network (`net/<name>`), the SGD momentum buffers of the stage in
progress (`momentum/<param name>`), extra arrays such as the content centroids (`extra/<name>`)
and, in the metadata, the run state: config, stage, completed epochs, per-epoch history.
Writes go to a temporary file first and replace the old one atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = "pam-train-checkpoint/1"


def save(path: str | Path, net: torch.nn.Module, state: dict,
         optimizer: torch.optim.Optimizer | None = None,
         extra: dict[str, torch.Tensor] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"net/{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    if optimizer is not None:
        names = {id(p): n for n, p in net.named_parameters()}
        for group in optimizer.param_groups:
            for p in group["params"]:
                buf = optimizer.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    tensors[f"momentum/{names[id(p)]}"] = buf.detach().cpu().contiguous()
    for k, v in (extra or {}).items():
        tensors[f"extra/{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "state": json.dumps(state)})
    os.replace(tmp, path)
    return path


def load(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor],
                                    dict[str, torch.Tensor], dict]:
    """(network state dict, momentum buffers by parameter name, extra arrays, run state)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    net, momentum, extra = {}, {}, {}
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path} is not a pam training checkpoint ({metadata.get('format')!r})")
        for key in f.keys():
            kind, name = key.split("/", 1)
            {"net": net, "momentum": momentum, "extra": extra}[kind][name] = f.get_tensor(key)
    return net, momentum, extra, json.loads(metadata["state"])


def restore_momentum(optimizer: torch.optim.Optimizer, net: torch.nn.Module,
                     momentum: dict[str, torch.Tensor]) -> None:
    params = dict(net.named_parameters())
    for name, buf in momentum.items():
        if name in params:
            optimizer.state[params[name]]["momentum_buffer"] = buf.to(params[name].device).clone()
