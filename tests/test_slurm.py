"""The pipeline on a real SLURM cluster: the tiny end-to-end config through ``--executor slurm``.

The test starts a single-node cluster on this machine with ``scripts/slurm_cluster.sh`` (root,
Debian/Ubuntu; it installs munge and Slurm with apt-get when missing), runs the tiny config through
the snakemake SLURM plugin with the project's profiles (``workflow/profiles/slurm`` +
``workflow/profiles/slurm-test``), and checks against the session's shared local run of the same config
(``conftest.tiny_local_run``) that

* every job that is not a local rule was submitted with sbatch, ran as a SLURM job and completed with
  exit code 0 (the controller's own record, polled with ``squeue --json`` during the run);
* the stages that ask for a GPU reached SLURM as a GPU request (the job's TRES request holds
  ``gres:gpu:1``; a job only runs once SLURM allocated that GPU) and went to the ``gpu`` partition
  chosen by the plugin's partition file, while CPU stages asked for no GPU and ran in ``main``;
* every output file of the SLURM run exists in the local run and vice versa, and the results
  (generations, trained heads, scores, tables, training curves) are equal.

Skipped only when MULTIEXIT_SKIP_SLURM=1.  Takes a few minutes (the tiny config runs on a tiny random
model carrying SmolLM2's tokenizer; the local run is shared with tests/test_pipeline.py).
Run it alone with: ``pytest tests/test_slurm.py -m slurm -s``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import TINY_CONFIG, shared_tiny_local_run, slurm_overlay

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "scripts" / "slurm_cluster.sh"
PROFILES = [REPO / "workflow" / "profiles" / "slurm", REPO / "workflow" / "profiles" / "slurm-test"]

RUN_TIMEOUT = 3600  # seconds per snakemake run

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("MULTIEXIT_SKIP_SLURM") == "1",
        reason="MULTIEXIT_SKIP_SLURM=1: the SLURM end-to-end test was switched off",
    ),
]


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running test cluster; stopped afterwards only if this fixture started it."""
    was_running = subprocess.run([str(CLUSTER), "status"], capture_output=True).returncode == 0
    t0 = time.monotonic()
    started = subprocess.run([str(CLUSTER), "start"], capture_output=True, text=True, timeout=1200)
    seconds = time.monotonic() - t0
    assert started.returncode == 0, f"slurm_cluster.sh start failed:\n{started.stdout}\n{started.stderr}"
    env_line = subprocess.run([str(CLUSTER), "env"], capture_output=True, text=True, check=True).stdout
    slurm_conf = env_line.strip().split("=", 1)[1]
    print(f"\n[slurm] cluster start: {seconds:.1f}s (already running: {was_running})")
    yield {"slurm_conf": slurm_conf, "start_seconds": seconds}
    if not was_running:
        subprocess.run([str(CLUSTER), "stop"], capture_output=True, timeout=300)


def _run_env(slurm_conf: str | None, slurm_logdir: Path | None) -> dict:
    env = dict(os.environ)
    # Settings a developer may have exported for a real cluster must not leak into the test.
    for key in list(env):
        if key.startswith(("MULTIEXIT_SLURM_", "SNAKEMAKE_SLURM_", "SBATCH_", "SLURM_")) or key == "SNAKEMAKE_PROFILE":
            env.pop(key)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_DATASETS_OFFLINE"] = "1"
    if slurm_conf:
        env["SLURM_CONF"] = slurm_conf
    if slurm_logdir:
        env["MULTIEXIT_SLURM_LOGDIR"] = str(slurm_logdir)
    return env


def _snakemake_runs(runs: dict[str, tuple[list[str], dict, Path]], watcher=None) -> dict[str, float]:
    """Runs snakemake invocations side by side (name -> (args, env, log)); returns seconds each."""
    procs, handles, seconds = {}, [], {}
    t0 = time.monotonic()
    try:
        for name, (args, env, log_path) in runs.items():
            cmd = [sys.executable, "-m", "snakemake", "--workflow-profile", "none", *args]
            handle = open(log_path, "w")
            handles.append(handle)
            procs[name] = (cmd, subprocess.Popen(cmd, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT))
        while len(seconds) < len(procs):
            for name, (_, proc) in procs.items():
                if name not in seconds and proc.poll() is not None:
                    seconds[name] = time.monotonic() - t0
            if time.monotonic() - t0 > RUN_TIMEOUT:
                pytest.fail(f"snakemake ran past {RUN_TIMEOUT}s: {sorted(set(procs) - set(seconds))}")
            if watcher:
                watcher()
            time.sleep(3)
    finally:
        for _, proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for handle in handles:
            handle.close()
    if watcher:
        watcher()
    for name, (cmd, proc) in procs.items():
        text = runs[name][2].read_text()
        assert proc.returncode == 0, f"{name} run failed ({' '.join(cmd)}):\n{text[-6000:]}"
    return seconds


class SlurmJobRecorder:
    """Polls the controller (``squeue --states=all --json``) and keeps the last record of each job."""

    def __init__(self, env: dict):
        self.env = env
        self.jobs: dict[int, dict] = {}
        self.lock = threading.Lock()

    def __call__(self):
        out = subprocess.run(
            ["squeue", "--states=all", "--json"], capture_output=True, text=True, env=self.env, timeout=60
        )
        if out.returncode != 0:
            return
        for job in json.loads(out.stdout).get("jobs", []):
            with self.lock:
                self.jobs[int(job["job_id"])] = job


# ------------------------------------------------------------------------------------ log parsing

BLOCK = re.compile(r"^(localrule|rule) (\S+):\n((?:[ \t]+.*\n?)*)", re.MULTILINE)
FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: (\S+)\)$", re.MULTILINE)
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.")


def parse_jobs(text: str) -> dict[int, dict]:
    """jobid -> {rule, local, resources} for every job snakemake started in this run."""
    jobs = {}
    for kind, rule, body in BLOCK.findall(text):
        found = re.search(r"^\s+jobid: (\d+)$", body, re.MULTILINE)
        if not found:
            continue
        res = re.search(r"^\s+resources: (.*)$", body, re.MULTILINE)
        resources = {}
        if res:
            for item in res.group(1).split(", "):
                if "=" in item:
                    key, value = item.split("=", 1)
                    resources[key.strip()] = value.strip()
        jobs[int(found.group(1))] = {"rule": rule, "local": kind == "localrule", "resources": resources}
    return jobs


def job_outputs(text: str) -> set[tuple[str, str]]:
    """(rule, its output) for every job block in a log; a job without outputs (the target rule) by its name.

    An interrupted run's unfinished jobs are redone by the rerun: with the same outputs they count once.
    """
    jobs, logged = set(), set()
    for _kind, rule, body in BLOCK.findall(text):
        jobid = re.search(r"^\s+jobid: (\d+)$", body, re.MULTILINE)
        if not jobid:
            continue
        logged.add(int(jobid.group(1)))
        output = re.search(r"^\s+output: (.*)$", body, re.MULTILINE)
        jobs.add((rule, output.group(1).strip() if output else rule))
    # A Ctrl-C that lands while Snakemake logs a job's header swallows the header (and the interrupt: see
    # conftest.interrupt); the job still runs, and its "Finished jobid" line names it.
    for jobid, rule in FINISHED.findall(text):
        if int(jobid) not in logged:
            jobs.add((rule, f"job {jobid}, finished, header not logged"))
    return jobs


# ------------------------------------------------------------------------------------ comparison

# Fields that describe the run rather than its results: timings, dates, software/commit stamps.
VOLATILE_NAMES = {
    "created", "date", "start_time", "end_time", "versions", "git_hash", "upper_git_hash",
    "pretty_env_info", "fingerprint", "host", "hostname",
}
VOLATILE_PATTERN = re.compile(r"(seconds|per_second|timings?$|^elapsed)")


def _volatile(key: str) -> bool:
    return key in VOLATILE_NAMES or bool(VOLATILE_PATTERN.search(key))


def _normalize(value, roots: tuple[str, ...]):
    if isinstance(value, dict):
        return {k: _normalize(v, roots) for k, v in value.items() if not _volatile(k)}
    if isinstance(value, list):
        return [_normalize(v, roots) for v in value]
    if isinstance(value, str):
        for root in roots:
            value = value.replace(root, "<results>")
        return value
    return value


def _assert_close(a, b, where: str):
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), f"{where}: keys differ: {sorted(a.keys() ^ b.keys())}"
        for key in a:
            _assert_close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{where}: lengths differ ({len(a)} vs {len(b)})"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), f"{where}: {a!r} vs {b!r}"
        assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9), (
            f"{where}: {a!r} (local) vs {b!r} (slurm)"
        )
    else:
        assert a == b, f"{where}: {a!r} (local) vs {b!r} (slurm)"


def _csv_rows(path: Path):
    def cell(value):
        try:
            return float(value)
        except ValueError:
            return value

    with open(path, newline="") as handle:
        return [[cell(v) for v in row] for row in csv.reader(handle)]


def _result_rows(rows: list[list]) -> list[list]:
    """Drops rows of a tidy table whose metric is a measurement of the run (e.g. tokens_per_second)."""
    if not rows or "metric" not in rows[0]:
        return rows
    column = rows[0].index("metric")
    return [row for row in rows if not (len(row) > column and isinstance(row[column], str) and _volatile(row[column]))]


def compare_results(local: Path, slurm: Path) -> int:
    """Asserts the two result folders hold the same files and the same results; returns files compared."""

    def listing(root: Path):
        return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}

    local_files, slurm_files = listing(local), listing(slurm)
    assert local_files == slurm_files, (
        f"only local: {sorted(local_files - slurm_files)[:20]}; only slurm: {sorted(slurm_files - local_files)[:20]}"
    )
    roots = tuple(sorted({str(p) for p in (local, slurm, local.resolve(), slurm.resolve())}, key=len, reverse=True))
    compared, problems = 0, []
    for rel in sorted(local_files):
        if rel.startswith(("logs/", "benchmarks/")) or rel.endswith(".snakemake_timestamp"):
            continue  # run logs and timings differ by nature
        try:
            compared += _compare_file(local / rel, slurm / rel, rel, roots)
        except AssertionError as error:
            problems.append(str(error).splitlines()[0])
    assert not problems, f"{len(problems)} result files differ between the local and the SLURM run:\n" + "\n".join(
        problems[:40]
    )
    return compared


def _compare_file(a: Path, b: Path, rel: str, roots: tuple[str, ...]) -> int:
    """Asserts one result file is the same in both runs; returns 1 if compared, 0 if skipped."""
    suffix = a.suffix
    if suffix == ".json":
        _assert_close(_normalize(json.loads(a.read_text()), roots), _normalize(json.loads(b.read_text()), roots), rel)
    elif suffix == ".jsonl":
        rows_a = [json.loads(line) for line in a.read_text().splitlines() if line.strip()]
        rows_b = [json.loads(line) for line in b.read_text().splitlines() if line.strip()]
        _assert_close(_normalize(rows_a, roots), _normalize(rows_b, roots), rel)
    elif suffix in (".csv", ".tsv"):
        _assert_close(_result_rows(_csv_rows(a)), _result_rows(_csv_rows(b)), rel)
    elif suffix in (".md", ".tex", ".txt", ".jinja"):
        assert _normalize(a.read_text(), roots) == _normalize(b.read_text(), roots), f"{rel} differs"
    elif suffix == ".safetensors":
        from safetensors.torch import load_file

        ta, tb = load_file(a), load_file(b)
        assert ta.keys() == tb.keys(), f"{rel}: tensor names differ"
        for name in ta:
            assert ta[name].shape == tb[name].shape, f"{rel}:{name} shape"
            assert (ta[name] == tb[name]).all(), f"{rel}:{name} differs between local and slurm runs"
    else:
        return 0  # figures (PNG/PDF embed render metadata): existence checked by the listing
    return 1


# ------------------------------------------------------------------------------------ the test


def _slurm_run(slurm_cluster, tmp_path: Path):
    """The same config as the shared local reference run (same overlay file contents), through the SLURM
    plugin with the project's profiles. Returns the results folder, the SLURM log folder, the run's log and
    the controller's record of its jobs."""
    slurm_dir, logdir = tmp_path / "slurm", tmp_path / "slurm-logs"
    configs = ["--configfile", str(TINY_CONFIG), str(slurm_overlay(tmp_path / "overlay.yaml"))]
    slurm_log = tmp_path / "slurm.log"
    env = _run_env(slurm_cluster["slurm_conf"], logdir)
    recorder = SlurmJobRecorder(env)
    profile_args = [arg for p in PROFILES for arg in ("--profile", str(p))]
    seconds = _snakemake_runs(
        {"slurm": ([*profile_args, *configs, "--config", f"results_dir={slurm_dir}"], env, slurm_log)},
        watcher=recorder,
    )
    print(f"[slurm] slurm run {seconds['slurm']:.0f}s")

    return slurm_dir, logdir, slurm_log.read_text(), recorder


def test_tiny_pipeline_through_slurm_matches_local_run(slurm_cluster, tmp_path_factory, tmp_path):
    # The shared local run goes on beside the SLURM run (which mostly waits on the controller), not before it.
    with ThreadPoolExecutor(1) as pool:
        local_run = pool.submit(shared_tiny_local_run, tmp_path_factory)
        slurm_dir, logdir, slurm_text, recorder = _slurm_run(slurm_cluster, tmp_path)
        local = local_run.result()
    assert local["second_returncode"] == 0, local["second_log"][-5000:]
    local_dir = Path(local["results"])

    assert "Falling back to 'sacct'" not in slurm_text, "plugin ignored --slurm-status-command squeue"

    # Same jobs in both runs.
    # the local run was interrupted once: its jobs are those of both invocations, a redone job counted once
    slurm_jobs = parse_jobs(slurm_text)
    local_counts = Counter(rule for rule, _ in job_outputs(local["first_log"]) | job_outputs(local["second_log"]))
    slurm_counts = Counter(j["rule"] for j in slurm_jobs.values())
    headers = re.findall(r"^(?:localrule|rule) \S+:$|^Finished jobid: .*$", local["first_log"], re.MULTILINE)
    assert local_counts == slurm_counts, (
        f"local {dict(local_counts)} vs slurm {dict(slurm_counts)}; local first log's job headers: {headers}"
    )
    for rule in ("prepare_model", "train_heads", "generate", "score"):
        assert slurm_counts[rule] >= 1, f"no {rule} job in the run: {dict(slurm_counts)}"

    # Every non-local job went through sbatch, exactly once.
    submitted = {}
    for jobid, slurm_id, slurm_logfile in SUBMITTED.findall(slurm_text):
        assert int(jobid) not in submitted, f"job {jobid} submitted twice"
        submitted[int(jobid)] = (int(slurm_id), Path(slurm_logfile))
    remote = {jid: j for jid, j in slurm_jobs.items() if not j["local"]}
    assert remote, "no job ran through SLURM"
    assert set(submitted) == set(remote), (
        f"non-local jobs without a SLURM job: {sorted(set(remote) - set(submitted))}; "
        f"submitted jobs that are local: {sorted(set(submitted) - set(remote))}"
    )

    # ... and ran there: the controller's record of each job.
    gpu_jobs = 0
    for jid, job in remote.items():
        slurm_id, slurm_logfile = submitted[jid]
        record = recorder.jobs.get(slurm_id)
        assert record is not None, f"SLURM job {slurm_id} ({job['rule']}) never seen by squeue"
        assert record["job_state"] == "COMPLETED", f"{job['rule']}: SLURM state {record['job_state']}"
        assert record["exit_code"] == 0, f"{job['rule']}: exit code {record['exit_code']}"
        assert record["current_working_directory"] == str(REPO)
        assert record["comment"].startswith(f"rule_{job['rule']}"), record["comment"]
        assert slurm_logfile.is_file() and slurm_logfile.is_relative_to(logdir), slurm_logfile
        assert f"rule {job['rule']}:" in slurm_logfile.read_text(), f"{slurm_logfile} is not the job's log"
        wants_gpu = int(job["resources"].get("gpu", "0")) > 0
        requested = f"{record.get('tres_per_job', '')} {record.get('tres_per_node', '')}"
        if wants_gpu:
            gpu_jobs += 1
            assert "gres:gpu:" in requested, f"{job['rule']}: GPU request did not reach SLURM ({requested})"
            assert record["partition"] == "gpu", f"{job['rule']}: ran in partition {record['partition']}"
        else:
            assert "gpu" not in requested, f"{job['rule']}: asked SLURM for a GPU ({requested})"
            assert record["partition"] == "main", f"{job['rule']}: ran in partition {record['partition']}"
    assert gpu_jobs >= 2, "the GPU stages (train_heads, generate) should have asked for GPUs"

    # Same outputs as the local run.
    compared = compare_results(local_dir, slurm_dir)
    assert compared >= 10
    print(
        f"[slurm] {len(remote)} SLURM jobs ({gpu_jobs} with a GPU), "
        f"{len(slurm_jobs) - len(remote)} local jobs; {compared} result files equal to the local run"
    )
