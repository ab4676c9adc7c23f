"""The download stage: fetch everything a config reads from the Hugging Face Hub, so later jobs run offline.

Compute nodes of most clusters cannot reach the Hub. One job on a node that can (a login node, or
a ``localrule``) calls :func:`fetch_all` on the list :func:`fetch_list` derives from the config:

* every model ``source`` that is a Hub name (local folders and ``package:`` models need nothing);
* every Hub corpus of a prompt set (``datasets.*``: the catalog's Hub id, config, splits, revision);
* every Hub corpus of head training / cast fitting (``train.data``, ``cast.options.data``);
* every lm-eval task's dataset (``dataset_path`` / ``dataset_name`` of the task's YAML in lm-eval);
* the MAUVE featurizer and the coherence model of ``metrics`` (unless they name a config model).

Everything lands in one Hugging Face cache, ``<hf_cache>/hub`` (models) and ``<hf_cache>/datasets``
(Arrow tables prepared by ``datasets.load_dataset``), i.e. the layout of ``HF_HOME=<hf_cache>``; the
later jobs run with ``HF_HOME=<hf_cache> HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1``.

A gated dataset (ROOTS Wikinews) without a token fails here, before anything is fetched, naming
the dataset and how to log in; a gated repository the token cannot open fails the same way.
CC-100 for head training is not on the Hub in a loadable form (the project streams
``data.statmt.org/cc-100/en.txt.xz``, ~80 GB); it is listed as a ``url`` item and skipped with a
message saying so.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

LOGIN_HINT = ("accept its terms on https://huggingface.co/datasets/{repo} with your account, then log in on this "
              "machine: `huggingface-cli login` (or `hf auth login`), or export HF_TOKEN=<a read token>")


class DownloadError(RuntimeError):
    """A fetch that cannot succeed; the message names the item and what to do."""


@dataclass(frozen=True)
class Fetch:
    """One thing to fetch: what it is, from where, and which config key needs it."""

    kind: str  # model | dataset | url
    repo_id: str
    config: str | None = None
    splits: tuple[str, ...] = ()
    revision: str | None = None
    gated: bool = False
    key: str = ""

    def as_dict(self) -> dict:
        return {**asdict(self), "splits": list(self.splits)}

    @classmethod
    def from_dict(cls, data: dict) -> "Fetch":
        return cls(**{**data, "splits": tuple(data.get("splits", ()))})

    def describe(self) -> str:
        where = self.repo_id + (f" [{self.config}]" if self.config else "") + (f" {'+'.join(self.splits)}" if self.splits else "")
        return f"{self.kind:7s} {where}{' (gated)' if self.gated else ''}  <- {self.key}"


# ------------------------------------------------------------------------------ what a config needs


def _is_hub_model(source: str) -> bool:
    if source.startswith(("package:", "model:", "pkgdir:")):
        return False
    return not Path(source).exists()


def _corpus_fetches(spec: str, key: str) -> list[Fetch]:
    from multiexit.inputs.corpora import CC100_URL, is_hub_spec

    out = []
    for part in (p.strip() for p in spec.split("+")):
        if not is_hub_spec(part):
            continue
        if part.startswith("cc100"):
            lang = part.split(":", 1)[1] if ":" in part else "en"
            out.append(Fetch("url", CC100_URL.format(lang=lang), key=key))
        elif part in ("wikitext-103", "wikitext-2"):
            out.append(Fetch("dataset", "Salesforce/wikitext", f"{part}-raw-v1", ("train",), key=key))
        else:  # hub:<dataset>[:<config>][@<split>][#<field>]
            rest = part[4:].split("#", 1)[0]
            rest, _, split = rest.partition("@")
            name, _, config = rest.partition(":")
            out.append(Fetch("dataset", name, config or None, (split or "train",), key=key))
    return out


_TASK_LINE = re.compile(r"^task:\s*['\"]?([^'\"\s#]+)", re.MULTILINE)


class _TolerantLoader:
    """A yaml SafeLoader that reads lm-eval's ``!function`` tags as plain strings."""

    @staticmethod
    def load(text: str) -> dict:
        import yaml

        class Loader(yaml.SafeLoader):
            pass

        Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
        return yaml.load(text, Loader=Loader) or {}


@functools.lru_cache(maxsize=4)
def _task_index(tasks_dir: str) -> dict[str, Path]:
    """task name -> the YAML file that defines it (one scan of lm-eval's task folder)."""
    index: dict[str, Path] = {}
    for path in sorted(Path(tasks_dir).rglob("*.yaml")):
        for name in _TASK_LINE.findall(path.read_text(encoding="utf-8", errors="replace")):
            index.setdefault(name, path)
    return index


def lm_eval_task_dataset(task: str, tasks_dir: str | Path | None = None) -> tuple[str, str | None]:
    """``(dataset_path, dataset_name)`` of an lm-eval task, read from the task's YAML in the lm-eval package."""
    if tasks_dir is None:
        import importlib.util

        spec = importlib.util.find_spec("lm_eval")
        if spec is None or not spec.submodule_search_locations:
            raise DownloadError("lm-eval is not installed (pip install multiexit[eval]); cannot list its task datasets")
        tasks_dir = Path(list(spec.submodule_search_locations)[0]) / "tasks"
    path = _task_index(str(tasks_dir)).get(task)
    config: dict = {}
    chain = [path] if path else []
    while chain:  # follow `include:` (the included file gives defaults)
        current = chain.pop()
        data = _TolerantLoader.load(current.read_text(encoding="utf-8", errors="replace"))
        config = {**data, **config}
        if data.get("include"):
            chain.append(current.parent / data["include"])
    if not config.get("dataset_path"):
        raise DownloadError(f"lm-eval task {task!r}: no task YAML with a dataset_path under {tasks_dir}")
    return str(config["dataset_path"]), config.get("dataset_name")


def fetch_list(config: dict) -> list[Fetch]:
    """Everything the (schema-validated) pipeline ``config`` reads from the Hub, without duplicates."""
    from multiexit.inputs.prompts import PromptSetSettings
    from multiexit.pipeline.plan import dataset_request

    items: list[Fetch] = []
    for name, spec in config.get("models", {}).items():
        if _is_hub_model(spec["source"]):
            items.append(Fetch("model", spec["source"], key=f"models.{name}.source"))
        train = spec.get("train") or {}
        if spec.get("exits") and not spec.get("multi_exit_checkpoint") and not train.get("task_data"):
            items += _corpus_fetches(str(train.get("data", "lee_background")), f"models.{name}.train.data")
        cast = spec.get("cast") or {}
        if cast:
            items += _corpus_fetches(str((cast.get("options") or {}).get("data", "lee_background")), f"models.{name}.cast.options.data")
    for name, spec in config.get("datasets", {}).items():
        request = PromptSetSettings.from_dict(dataset_request(spec), f"datasets.{name}")
        entry = request.entry()
        if entry.source == "hub" and not Path(str(entry.path)).exists():
            items.append(Fetch("dataset", entry.path, entry.hub_config, tuple(entry.split.split("+")), entry.revision,
                               entry.gated, f"datasets.{name}"))
    lm = config.get("lm_eval") or {}
    for i, task in enumerate(lm.get("tasks", [])):
        if isinstance(task, str):
            path, name = lm_eval_task_dataset(task)
            items.append(Fetch("dataset", path, name, (), key=f"lm_eval.tasks[{i}]"))
    from multiexit.stages.score import DEFAULT_COHERENCE_MODEL, DEFAULT_FEATURIZER

    metrics = config.get("metrics") or {}
    wanted = metrics.get("metrics", ("diversity", "mauve", "coherence", "length"))
    if "mauve" in wanted and _is_hub_model(str(metrics.get("featurizer", DEFAULT_FEATURIZER))):
        items.append(Fetch("model", str(metrics.get("featurizer", DEFAULT_FEATURIZER)), key="metrics.featurizer"))
    if "coherence" in wanted and _is_hub_model(str(metrics.get("coherence_model", DEFAULT_COHERENCE_MODEL))):
        items.append(Fetch("model", str(metrics.get("coherence_model", DEFAULT_COHERENCE_MODEL)), key="metrics.coherence_model"))
    if metrics.get("perplexity_model") and _is_hub_model(str(metrics["perplexity_model"])):
        items.append(Fetch("model", str(metrics["perplexity_model"]), key="metrics.perplexity_model"))
    unique: dict[tuple, Fetch] = {}
    for item in items:
        ident = (item.kind, item.repo_id, item.config, item.revision)
        if ident in unique:
            merged = tuple(dict.fromkeys(unique[ident].splits + item.splits))
            unique[ident] = Fetch(item.kind, item.repo_id, item.config, merged, item.revision, item.gated or unique[ident].gated,
                                  f"{unique[ident].key}, {item.key}")
        else:
            unique[ident] = item
    return list(unique.values())


# ------------------------------------------------------------------------------ fetching


def default_hf_home() -> Path:
    """The user's Hugging Face cache root (``$HF_HOME`` or ~/.cache/huggingface)."""
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")


def _token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


def _gated_error(item: Fetch) -> DownloadError:
    what = "dataset" if item.kind == "dataset" else "model"
    return DownloadError(f"{what} {item.repo_id!r} ({item.key}) is gated: " + LOGIN_HINT.format(repo=item.repo_id))


def check_access(items: list[Fetch]) -> None:
    """Fail before any download when a gated item is listed and no Hugging Face token is available."""
    gated = [item for item in items if item.gated]
    if gated and _token() is None:
        raise _gated_error(gated[0])


def _fetch_one(item: Fetch, hf_home: Path, token: str | None) -> None:
    if item.kind == "model":
        from huggingface_hub import snapshot_download

        snapshot_download(item.repo_id, revision=item.revision, cache_dir=str(hf_home / "hub"), token=token)
        return
    import datasets

    kwargs = {"cache_dir": str(hf_home / "datasets"), "token": token}
    if item.revision:
        kwargs["revision"] = item.revision
    for split in item.splits or (None,):
        if split is None:
            datasets.load_dataset(item.repo_id, item.config, **kwargs)
        else:
            datasets.load_dataset(item.repo_id, item.config, split=split, **kwargs)


def fetch_all(items: list[Fetch], hf_home: str | Path | None = None, log=print) -> list[dict]:
    """Fetch every item into ``hf_home`` (default: the user's cache); returns one status row per item."""
    from huggingface_hub.errors import GatedRepoError

    try:
        from datasets.exceptions import DatasetNotFoundError
    except ImportError:  # pragma: no cover - older datasets
        DatasetNotFoundError = FileNotFoundError  # noqa: N806
    hf_home = Path(hf_home) if hf_home else default_hf_home()
    check_access(items)
    token = _token()
    report = []
    for item in items:
        if item.kind == "url":
            log(f"skip    {item.repo_id} ({item.key}): not a Hub repository; fetch it yourself or point the key at a local copy")
            report.append({**item.as_dict(), "status": "skipped"})
            continue
        log(f"fetch   {item.describe()}")
        try:
            _fetch_one(item, hf_home, token)
        except GatedRepoError as err:
            raise _gated_error(item) from err
        except DatasetNotFoundError as err:
            if "gated" in str(err).lower():
                raise _gated_error(item) from err
            raise DownloadError(f"dataset {item.repo_id!r} ({item.key}): {err}") from err
        except Exception as err:
            if "scripts are no longer supported" in str(err) or "dataset script" in str(err).lower():
                raise DownloadError(
                    f"dataset {item.repo_id!r} ({item.key}) still ships a loading script, which this `datasets` no longer runs; "
                    f"download its parquet export (revision 'refs/convert/parquet') or a local parquet copy and set "
                    f"{item.key}.path to that folder") from err
            raise
        report.append({**item.as_dict(), "status": "fetched"})
    return report


__all__ = ["DownloadError", "Fetch", "check_access", "default_hf_home", "fetch_all", "fetch_list", "lm_eval_task_dataset"]
