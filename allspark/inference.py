"""Run a trained multispectral AllSpark model over chips.

A *predictor* is a checkpoint folder: the model's trainable weights and config (safetensors +
JSON, see :mod:`allspark.model.checkpoint`) plus the band normaliser fitted at training time.
It is loaded once per process (a Dask worker loads it on its first task and keeps it), never
shipped inside each task.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from allspark.finetune import Normalizer
from allspark.model.checkpoint import load_checkpoint, save_checkpoint
from allspark.model.model import AllSpark

NORMALIZER_FILE = "normalizer.json"


@dataclass
class Predictor:
    model: AllSpark
    normalizer: Normalizer

    def predict_proba(self, chips: np.ndarray, wavelengths: list[float], batch_size: int) -> np.ndarray:
        """Class probabilities (n, class, y, x) for (n, band, y, x) chips; NaN where no band has data."""
        wl = torch.tensor(wavelengths, dtype=torch.float32)
        out = []
        for start in range(0, len(chips), batch_size):
            inputs, has_data = self.normalizer.apply(chips[start : start + batch_size])
            probs = self.model.predict({"image": inputs, "wavelengths": wl}).cpu()
            out.append(torch.where(has_data[:, None], probs, torch.nan).numpy())
        return np.concatenate(out) if out else np.empty((0, self.model.config.head.num_classes, *chips.shape[2:]), "float32")


def save_predictor(model: AllSpark, normalizer: Normalizer, directory: Path) -> None:
    save_checkpoint(model, directory)
    (directory / NORMALIZER_FILE).write_text(normalizer.model_dump_json(indent=2))


@functools.lru_cache(maxsize=2)
def load_predictor(directory: str) -> Predictor:
    """Load (once per process) the predictor stored in ``directory``."""
    path = Path(directory)
    normalizer_file = path / NORMALIZER_FILE
    if not normalizer_file.exists():
        raise FileNotFoundError(f"checkpoint {path} has no {NORMALIZER_FILE}: it was not written by this pipeline")
    model = load_checkpoint(path)
    model.eval()
    return Predictor(model=model, normalizer=Normalizer.model_validate_json(normalizer_file.read_text()))


def checkpoint_digest(directory: Path) -> str:
    """A short content hash of a checkpoint folder, to key caches and name prediction stores."""
    digest = hashlib.sha256()
    for file in sorted(p for p in directory.iterdir() if p.is_file()):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]
