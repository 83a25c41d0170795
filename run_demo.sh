#!/usr/bin/env bash
# README command 1: install what is needed, then train Mamba-UNet on the embedded synthetic cardiac phantom (CPU, a few
# minutes) and evaluate it. Outputs go to demo/ (models, logs, evaluation reports). Extra arguments are passed to
# both runs, e.g. ./run_demo.sh --max_iterations 600
set -euo pipefail
cd "$(dirname "$0")"
source ./setup_env.sh
set -euo pipefail
common=(--meta_file configs/metadata.json --logging_file configs/logging.conf)
python -m monai.bundle run training --config_file "['configs/train.json','configs/demo.json']" "${common[@]}" "$@"
python -m monai.bundle run evaluating \
  --config_file "['configs/train.json','configs/evaluate.json','configs/demo.json']" "${common[@]}" "$@"
