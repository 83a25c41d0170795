#!/usr/bin/env bash
# One GPU call (at most 540 s plus unpacking the runtime, one H100), from the repository root:
#   bash .ci/gpu/scan_call.sh
# 1. the GPU tests of the Triton scan (against mamba-ssm, compiled path) and of the tiled cross-scan kernels;
# 1b. `scripts.benchmark_scan --layout`: SS2D's cross-scan + merge per impl (gather, views, Triton), bf16;
# 2. `scripts.benchmark_scan --sweep`: every tile configuration, the winners, then the table with the winners next to
#    mamba-ssm (fp32);
# 3. the same table with bf16 inputs at the sweep's winners.
# PYTEST_S, LAYOUT_S, SWEEP_S and BF16_S override the time limits (120, 60, 360 and 60 s); SWEEP_ONLY=REGEX sweeps
# only the matching rows (and the defaults), see scripts/benchmark_scan.py --sweep_only.
# Outputs go to $OUT (the device tool brings them back): pytest.txt, layout.txt, sweep.txt, bench_bf16.txt.
set -o pipefail
source .ci/gpu/env.sh
t0=$(date +%s)
timeout "${PYTEST_S:-120}" python3 -m pytest -q -p no:cacheprovider tests/test_triton_scan.py tests/test_triton_cross_scan.py 2>&1 | tail -20 | tee "$OUT"/pytest.txt
echo "pytest done at $(( $(date +%s) - t0 )) s"
timeout "${LAYOUT_S:-60}" python3 -m scripts.benchmark_scan --layout --dtype bfloat16 --steps 10 --warmup 3 2>&1 | tee "$OUT"/layout.txt
echo "layout done at $(( $(date +%s) - t0 )) s"
timeout "${SWEEP_S:-360}" python3 -m scripts.benchmark_scan --sweep ${SWEEP_ONLY:+--sweep_only "$SWEEP_ONLY"} --steps 10 --warmup 3 2>&1 | tee "$OUT"/sweep.txt
echo "sweep done at $(( $(date +%s) - t0 )) s"
tiles=$(sed -n 's/^sweep winner: //p' "$OUT"/sweep.txt | grep -o -- '--tile [^ ]*' | tr '\n' ' ')
echo "winners: ${tiles:-none}"
# shellcheck disable=SC2086  # the winners are separate --tile arguments
timeout "${BF16_S:-60}" python3 -m scripts.benchmark_scan --steps 10 --warmup 3 --dtype bfloat16 $tiles 2>&1 | tee "$OUT"/bench_bf16.txt
echo "all done at $(( $(date +%s) - t0 )) s"
