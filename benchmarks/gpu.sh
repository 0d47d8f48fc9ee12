#!/usr/bin/env bash
# B3: the whole GPU check in one command (< 9 minutes on an H100). See benchmarks/gpu_bench.py.
#
#   bash benchmarks/gpu.sh            # on the GPU machine: results in $OUT (or benchmarks/.work/gpu-out)
#   bash benchmarks/gpu.sh --smoke    # on a CPU, tiny model, < 1 minute: checks the plumbing
#   bash benchmarks/gpu.sh --prepare  # here, before: wheels the GPU image lacks -> .whl/, and NCBI
#                                     # -> benchmarks/.work/ncbi-disease (for the B1-on-GPU part)
# Device call: carry [".whl", "benchmarks/.work/ncbi-disease"], command `bash benchmarks/gpu.sh`,
# timeout_s 600 (the script keeps itself under ~9 minutes: a 510 s deadline).
#
# Missing Python packages travel as wheels in .whl/ (the device tool's `carry`, see
# /work/.library/device/README.md): they are installed into /tmp/site first.
# Prints a summary table; the last line is one JSON object. Files in $OUT: gpu_bench.log,
# parts.log (the tail of every part's log), b3.json, b3.md.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
    # cattrs is not in the GPU image; it needs attrs>=25.4 and typing-extensions>=4.14 (pure Python)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl cattrs==26.2.1 attrs==26.1.0 typing_extensions==4.16.0
    mkdir -p benchmarks/.work
    rm -rf benchmarks/.work/ncbi-disease
    cp -r /work/shared/data/ncbi-disease benchmarks/.work/ncbi-disease
    ls .whl benchmarks/.work/ncbi-disease
    exit 0
fi

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

PY=python3
# without a GPU (the smoke run) the system python may lack transformers: use the benchmark venv
if ! "$PY" -c "import transformers, tokenizers" 2>/dev/null && [ -x benchmarks/.work/venv/bin/python ]; then
    PY=benchmarks/.work/venv/bin/python
fi
if ! "$PY" - <<'PY'
import importlib.util, sys
need = ("torch", "attrs", "cattrs", "click", "safetensors", "transformers", "tokenizers")
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    print("missing Python packages:", " ".join(missing))
    sys.exit(1)
PY
then
    echo "carry them as wheels in .whl/ (see /work/.library/device/README.md)"
    exit 2
fi

OUT_DIR="${OUT:-benchmarks/.work/gpu-out}"
mkdir -p "$OUT_DIR"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
fi
"$PY" benchmarks/gpu_bench.py --out "$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/gpu_bench.log"
