#!/usr/bin/env bash
# README command 2 (and CI's .ci/run): install what is needed, then run the whole test suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")"
WITH_DEV=1 source ./setup_env.sh
set -euo pipefail
python -m pytest tests -q -p no:cacheprovider "$@"
