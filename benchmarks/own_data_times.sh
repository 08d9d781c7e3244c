#!/usr/bin/env bash
# Seconds per 1000 training steps of every own-data config (configs/own/*: pixel, pyramid, autoencoder, latent at 32,
# 64 and 128 px), as `fit` runs them, on a generated folder of RGB images (README: "Your own images").
#   benchmarks/own_data_times.sh OUT_DIR [STEPS] [extra fit options...]
#   KINDS="pixel_dit pyramid_dit" benchmarks/own_data_times.sh OUT_DIR 3    # other configs (configs/own/KIND_SIZE.yaml)
# Writes OUT_DIR/steps_<size>.json; `python -m pyramid_dm bench steps` does the timing (validation, sample callbacks,
# checkpoints and W&B excluded; the first 3 steps untimed).
set -euo pipefail
out=${1:?output directory}; steps=${2:-30}; shift $(( $# > 1 ? 2 : 1 ))
work=$(mktemp -d)
python3 - "$work/images" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from helpers import make_rgb_folder
make_rgb_folder(Path(sys.argv[1]), {"disc": 100, "square": 100, "bar": 100}, size=128)
PY
mkdir -p "$out"
for size in 32 64 128; do
  python3 -m pyramid_dm shards folder "$work/images" --out "$work/shards$size" --size "$size" --no-progress
  configs=()
  for kind in ${KINDS:-pixel pyramid autoencoder latent}; do
    [ -e "configs/own/${kind}_$size.yaml" ] && configs+=(--config "configs/own/${kind}_$size.yaml")
  done
  [ ${#configs[@]} -gt 0 ] || continue
  python3 -m pyramid_dm bench steps --steps "$steps" --json "$out/steps_$size.json" "${configs[@]}" \
    -- --data.init_args.shards "$work/shards$size" "$@"
done
