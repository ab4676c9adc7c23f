"""Device hygiene without a GPU: no decoding method creates a tensor on the default device and mixes it with the model's.

On a GPU the model's tensors live on ``cuda`` while a factory call without ``device=``
(``torch.arange(n)``, ``torch.zeros(...)``, ``torch.tensor(...)``) makes a CPU tensor; using it in an
op with the model's tensors fails there ("Expected all tensors to be on the same device") or
silently syncs. On a CPU-only machine both are CPU tensors and nothing fails, so
:class:`StrayTensorMode` plays the GPU's part: it marks every tensor made by a factory call
without a device as *stray* (the CPU copy it would be on a GPU), lets ``.to(device)``/``.cuda()``
clear the mark, carries the mark through ops among stray tensors only, and records every op that
mixes a stray tensor (not a 0-d scalar, which CUDA accepts) with one of the model's.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

import multiexit.decoding.registry as decoding
from multiexit import AutoMultiExitModel, MultiExitConfiguration
from multiexit.inputs.models import load_model
from multiexit.stages.generate import _left_pad, eos_token_ids, make_run

FACTORIES = {
    torch.arange, torch.zeros, torch.ones, torch.full, torch.empty, torch.tensor, torch.eye, torch.rand, torch.randn,
    torch.randint, torch.randperm, torch.linspace, torch.as_tensor, torch.scalar_tensor,
}
ROOT = str(Path(__file__).resolve().parents[1])


def _moves_device(args, kwargs) -> bool:
    """Whether a ``Tensor.to`` call names a device (a device, a device string or another tensor)."""
    if kwargs.get("device") is not None:
        return True
    return any(isinstance(a, (torch.device, str, torch.Tensor)) for a in args[1:])


class StrayTensorMode(TorchFunctionMode):
    """Record ops that would mix a default-device (CPU) tensor with the model's device on a GPU."""

    def __init__(self):
        super().__init__()
        self.violations: list[str] = []

    @staticmethod
    def is_stray(tensor) -> bool:
        return isinstance(tensor, torch.Tensor) and getattr(tensor, "_stray_on_cpu", False)

    @staticmethod
    def _mark(outputs) -> None:
        for item in tree_flatten(outputs)[0]:
            if isinstance(item, torch.Tensor):
                item._stray_on_cpu = True

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in FACTORIES:
            source = args[0] if args else kwargs.get("data")
            if kwargs.get("device") is None and not (func is torch.as_tensor and isinstance(source, torch.Tensor) and not self.is_stray(source)):
                self._mark(out)
            return out
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        stray = [t for t in tensors if self.is_stray(t)]
        if not stray:
            return out
        if func in (torch.Tensor.to, torch.Tensor.cuda) and (func is torch.Tensor.cuda or _moves_device(args, kwargs)):
            # moved to the model's device, as a GPU run does; on the CPU .to() returns the same
            # object, so hand back an unmarked alias
            return out.view_as(out) if any(out is t for t in stray) else out
        if len(stray) == len(tensors):
            self._mark(out)  # ops among stray tensors stay on the CPU
        elif any(t.dim() > 0 for t in stray):
            self.violations.append(f"{getattr(func, '__name__', func)} mixes a stray CPU tensor with the model's, at\n{self._where()}")
        return out

    @staticmethod
    def _where() -> str:
        frames = [f for f in traceback.extract_stack() if f.name not in ("__torch_function__", "_where")]
        ours = [f for f in frames if f.filename.startswith(ROOT) and "/.venv/" not in f.filename] or frames
        return "".join(traceback.format_list(ours[-3:]))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smollm2_dir):
    from transformers import AutoTokenizer

    from conftest import tiny_config

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    config = tiny_config("llama", vocab_size=len(tokenizer), layers=4)
    config.eos_token_id, config.pad_token_id, config.bos_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id
    torch.manual_seed(0)
    model = AutoMultiExitModel.from_config(config, MultiExitConfiguration(lm_head_layer_indices=[2, 4]))
    folder = tmp_path_factory.mktemp("tiny_llama_device")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


METHODS = {
    "greedy": {},
    "beam": {"num_beams": 3},
    "top_k": {"top_k": 20},
    "top_p": {"top_p": 0.9},
    "typical": {"typical_p": 0.9},
    "exit": {"layer": 2},
    "acd": {"upper": "original", "lower": 2},
    "acd_shared": {"upper": 4, "lower": 2, "vocab_projection_mode": "shared_projection_direct"},
    "dola": {"layers": "low", "repetition_penalty": 1.2},
    "contrastive_search": {"top_k": 4, "penalty_alpha": 0.6},
    "contrastive_decoding": {"amateur": None, "num_beams": 2},
    "contrastive_decoding_greedy": {"amateur": None, "num_beams": 1},
}


def run_method(tiny_dir, method: str) -> tuple[list[str], torch.Tensor]:
    """Generate from two left-padded prompts with ``method`` under :class:`StrayTensorMode`."""
    from multiexit.decoding.contrastive_decoding import load_amateur

    model, tokenizer = load_model(tiny_dir, device="cpu", dtype="float32")
    params = dict(METHODS[method])
    if "amateur" in params:
        params["amateur"] = tiny_dir
        load_amateur(tiny_dir, torch.device("cpu"), torch.float32)  # loading is not the step under test
    name = method.removesuffix("_shared").removesuffix("_greedy")  # the entries' variants of one method
    setting = make_run("x", name, params, {"name": "gensim-lee"}).setting
    eos = eos_token_ids(model, tokenizer)
    ids, mask = _left_pad([[504, 2143, 281, 1001, 30], [2143, 281, 7]], tokenizer.pad_token_id, torch.device("cpu"))
    mode = StrayTensorMode()
    with mode:
        new = decoding.generate(model, setting, ids, mask, 4, eos_token_id=eos[0], pad_token_id=tokenizer.pad_token_id)
    return mode.violations, new


@pytest.mark.parametrize("method", list(METHODS))
def test_no_method_mixes_a_stray_cpu_tensor_into_the_step(tiny_dir, method):
    violations, new = run_method(tiny_dir, method)
    assert new.shape[0] == 2 and new.shape[1] >= 1
    assert not violations, "\n".join(violations[:3])


def test_the_mode_catches_a_planted_stray_tensor(tiny_dir, monkeypatch):
    """The check itself: ACD with the contrasted logits shifted by ``torch.arange`` made without a device."""
    from multiexit.model import modeling

    real = modeling.MultiExitMixin.multi_exit_forward

    def planted(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        out.logits = out.logits + torch.arange(out.logits.shape[-1]) * 0  # the bug: no device=out.logits.device
        return out

    monkeypatch.setattr(modeling.MultiExitMixin, "multi_exit_forward", planted)
    violations, _ = run_method(tiny_dir, "acd")
    assert violations and "add" in violations[0] and "test_device.py" in violations[0]

    def mended(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        out.logits = out.logits + torch.arange(out.logits.shape[-1], device=out.logits.device) * 0
        return out

    monkeypatch.setattr(modeling.MultiExitMixin, "multi_exit_forward", mended)
    assert run_method(tiny_dir, "acd")[0] == []


def test_a_mask_on_another_device_is_moved_to_the_ids(tiny_dir):
    """DoLa, contrastive search and contrastive decoding take the caller's mask as it comes: one left on the CPU
    beside ids on the GPU (here: made without a device, so stray) is moved to the ids' device before any use, and
    the cached batch then runs its prompt and a step without mixing devices. Without the move the mask would reach
    the model on the CPU, which the mode records (checked by planting the move's removal)."""
    from multiexit.decoding.common import CachedBatch

    model, _ = load_model(tiny_dir, device="cpu", dtype="float32")
    ids, mask = _left_pad([[504, 2143, 281, 1001, 30], [2143, 281, 7]], 0, torch.device("cpu"))
    mode = StrayTensorMode()
    with torch.no_grad(), mode:
        stray = torch.tensor(mask.tolist())
        assert mode.is_stray(stray)
        batch = CachedBatch(model, ids, stray)
        batch.prefill()
        batch.step(ids[:, -1])
    assert not mode.is_stray(batch.mask)
    assert not mode.violations, "\n".join(mode.violations[:3])
