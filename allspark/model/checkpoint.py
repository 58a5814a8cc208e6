"""Checkpoints of :class:`AllSpark` models: the trained parts in safetensors, the config in JSON.

The frozen language model is not saved; it is rebuilt from ``config.llm``. Nothing is pickled:
safetensors holds only tensors, and the config is plain JSON validated by pydantic on load.

Layout of a checkpoint directory::

    config.json        {"model_type": "allspark", "format_version": 3, "config": {...AllSparkConfig...}}
    model.safetensors  encoder.*, bridge.*, reader.adapters.*, head.* tensors (head buffers too:
                       the target scaling that un-scales regression outputs)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from allspark.core.bundle import CHECKPOINT_FORMAT
from allspark.model.model import AllSpark, AllSparkConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
MODEL_TYPE = "allspark"


def save_checkpoint(model: AllSpark, directory: str | Path) -> Path:
    """Write ``model``'s config and trainable weights into ``directory`` (created if needed); return it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().cpu().contiguous() for key, value in model.trainable_state_dict().items()}
    save_file(tensors, directory / WEIGHTS_FILE, metadata={"model_type": MODEL_TYPE})
    document = {"model_type": MODEL_TYPE, "format_version": CHECKPOINT_FORMAT, "config": model.config.model_dump()}
    (directory / CONFIG_FILE).write_text(json.dumps(document, indent=2) + "\n")
    return directory


def load_checkpoint(directory: str | Path, device: torch.device | str | None = None) -> AllSpark:
    """Rebuild an :class:`AllSpark` from a checkpoint directory, in eval mode.

    ``device`` defaults to CUDA when available, else CPU.

    Raises:
        FileNotFoundError: a checkpoint file is missing.
        ValueError: the config is invalid, or the weights do not match the model the config
            describes (missing, unexpected or mis-shaped keys).
    """
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"no checkpoint config at {config_path}")
    try:
        document = json.loads(config_path.read_text())
        if document.get("model_type") != MODEL_TYPE:
            raise ValueError(f"model_type is {document.get('model_type')!r}, expected {MODEL_TYPE!r}")
        if document.get("format_version") != CHECKPOINT_FORMAT:
            raise ValueError(f"format_version is {document.get('format_version')!r}, expected {CHECKPOINT_FORMAT}")
        config = AllSparkConfig.model_validate(document["config"])
    except (json.JSONDecodeError, KeyError, AttributeError, ValidationError, ValueError) as error:
        raise ValueError(f"invalid checkpoint config {config_path}: {error}") from error
    model = AllSpark(config, device=device)
    load_trainable_weights(model, directory / WEIGHTS_FILE)
    return model.eval()


def load_trainable_weights(model: AllSpark, path: str | Path) -> None:
    """Load the trainable weights from a safetensors file into ``model``, checking the key contract.

    Every key of ``model.trainable_state_dict()`` must be present with the same shape, and no
    other key may be; otherwise a ``ValueError`` names the file and lists the offending keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint weights at {path}")
    try:
        tensors = load_file(path)
    except SafetensorError as error:
        raise ValueError(f"unreadable safetensors file {path}: {error}") from error
    expected = model.trainable_state_dict()
    missing = sorted(expected.keys() - tensors.keys())
    unexpected = sorted(tensors.keys() - expected.keys())
    misshaped = sorted(
        f"{key}: file {tuple(tensors[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected.keys() & tensors.keys()
        if tensors[key].shape != expected[key].shape
    )
    if missing or unexpected or misshaped:
        problems = [
            f"{label}: {', '.join(keys)}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
            if keys
        ]
        raise ValueError(f"checkpoint {path} does not match the model; " + "; ".join(problems))
    # The LM's weights are not in the file: load non-strictly, having checked every other key above.
    model.load_state_dict(tensors, strict=False)
