#!/usr/bin/env bash
# The GPU check of the main job, as one prepared script:
#
#     bash benchmarks/gpu_check.sh [OUT_DIR] [DEVICE]        (defaults: runs/gpu_check cuda)
#
# 1. The default sweep (`lowres sweep`: six losses on synth, probes 48..3 px) with the 20-layer
#    SphereFace network (`--backbone sphere20`, 512-d, 112x96 input), no figures. The models are
#    trained on this device into a fresh cache, OUT_DIR/models (a cache holding models trained
#    elsewhere would skip the GPU training path), and OUT_DIR/sweep is removed first, so every
#    cell is computed here. Prints the inference stage's rate from
#    provenance.json: images degraded and embedded per second (each batch is degraded once and
#    fed to every model) and model-images per second (counting each model's forward pass).
# 2. The three benchmarks of the measuring instrument on the same device: degrade+embed overhead
#    (sphere20), batched chain vs per-image path, streaming vs materialised all-vs-all metrics.
#
# Knobs (environment), e.g. to try the plumbing on a CPU in a minute:
#   SWEEP_ARGS="--data orl --models SM --epochs 1 --scales 1,0.5" EMBED_MODEL=cpunet \
#   METRICS_ARGS="--n-ids 200" bash benchmarks/gpu_check.sh /tmp/gpu_check cpu
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/gpu_check}"
device="${2:-cuda}"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg NO_ALBUMENTATIONS_UPDATE=1

python3 - <<'EOF'
import torch
print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
EOF

echo "== 1. default sweep, sphere20, device $device"
rm -rf "$out/models" "$out/sweep"
# shellcheck disable=SC2086
python3 -m lowres sweep --backbone sphere20 --device "$device" --folds 0 --no-plot \
    --model-cache "$out/models" --out "$out/sweep" ${SWEEP_ARGS:-}
python3 - "$out/sweep/provenance.json" <<'EOF'
import json
import sys

prov = json.load(open(sys.argv[1], encoding="utf-8"))
inf, t = prov["inference"], prov["timings_s"]
print(
    f"inference stage on {inf['device']}: {inf['images_per_s']} images/s degraded+embedded "
    f"({inf['images_degraded_and_embedded']} images), {inf['model_images_per_s']} model-images/s "
    f"({inf['model_images']}); stage seconds: "
    + ", ".join(f"{k} {v:.1f}" for k, v in t.items())
)
EOF

echo "== 2a. degrade+embed overhead (benchmarks/embed.py)"
python3 benchmarks/embed.py --device "$device" --model "${EMBED_MODEL:-sphere20}"
echo "== 2b. batched chain vs per-image path (benchmarks/degrade.py)"
python3 benchmarks/degrade.py --device "$device"
echo "== 2c. all-vs-all metrics (benchmarks/metrics.py)"
# shellcheck disable=SC2086
python3 benchmarks/metrics.py --device "$device" ${METRICS_ARGS:-}
