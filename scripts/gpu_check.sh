#!/usr/bin/env bash
# The device check: bnbench on a bare one-GPU Linux machine (docs/gpu.md).
#
# Here, with network (the package index) and the Fashion-MNIST files:
#   scripts/gpu_check.sh --prepare DIR     # wheels of what such a machine lacks, and the data, into DIR
# There, with a CUDA PyTorch and no network, from the repository's root:
#   scripts/gpu_check.sh --kit DIR [--out OUT] [--device cuda]
# installs bnbench's missing dependencies from DIR (into a folder of its own, not the system),
# runs every step of scripts/gpu_check.py and writes its results under OUT (default
# $OUT, else ./gpu-check): summary.md, summary.json, env.json, log.txt, bench.csv, records.tar.gz.
# A dry run anywhere: scripts/gpu_check.sh --device cpu --quick --data DIR (CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# What a machine with PyTorch, pandas, scipy, statsmodels, matplotlib, typer and rich lacks
# (pure-Python; antlr4's runtime is Hydra's exact pin and ships as source only: built here).
KIT_PACKAGES=("hydra-core==1.3.8" "omegaconf==2.3.1" "antlr4-python3-runtime==4.9.3" "hydra-joblib-launcher==1.2.0")

if [[ "${1:-}" == "--prepare" ]]; then
    dir=${2:?usage: scripts/gpu_check.sh --prepare DIR}
    mkdir -p "$dir/wheels" "$dir/data/FashionMNIST/raw"
    "$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$dir/wheels" "${KIT_PACKAGES[@]}"
    src=""
    for candidate in "${BNBENCH_DATA:-}/FashionMNIST/raw" data/FashionMNIST/raw /usr/share/datasets/fashion-mnist; do
        if [[ -f "$candidate/train-images-idx3-ubyte.gz" ]]; then src=$candidate; break; fi
    done
    if [[ -z "$src" ]]; then
        echo "gpu_check: no Fashion-MNIST IDX files found (BNBENCH_DATA/FashionMNIST/raw, data/FashionMNIST/raw or" \
             "/usr/share/datasets/fashion-mnist: apt-get install dataset-fashion-mnist)" >&2
        exit 1
    fi
    cp "$src"/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz "$dir/data/FashionMNIST/raw/"
    echo "gpu_check: kit in $dir: $(ls "$dir/wheels" | wc -l) wheels, Fashion-MNIST from $src ($(du -sh "$dir" | cut -f1))"
    exit 0
fi

kit=""
args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --kit) kit=$2; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # bnbench from this checkout, not installed
if [[ -n "$kit" ]]; then
    site=${TMPDIR:-/tmp}/bnbench-gpu-check-site
    if ! "$PYTHON" -c "import hydra, omegaconf, hydra_plugins.hydra_joblib_launcher" 2>/dev/null; then
        "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$site" "$kit"/wheels/*.whl
        export PYTHONPATH="$PYTHONPATH:$site"
    fi
    args=(--data "$kit/data" ${args[@]+"${args[@]}"})
fi
exec "$PYTHON" scripts/gpu_check.py ${args[@]+"${args[@]}"}
