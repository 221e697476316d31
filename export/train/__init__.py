"""Training: `train(TrainConfig(...))`, `resume(run_dir)`, `load_trained(run_dir)`."""

from .config import TrainConfig
from .run import CHECKPOINT, MODEL, load_trained, resume, train

__all__ = ["CHECKPOINT", "MODEL", "TrainConfig", "load_trained", "resume", "train"]
