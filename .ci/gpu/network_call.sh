#!/usr/bin/env bash
# One GPU call, from the repository root: Mamba-UNet's bf16 training/inference benchmark (compiled unless COMPILE=0)
# once per variant,
#   bash .ci/gpu/network_call.sh "--cross_scan_impl views" "--cross_scan_impl gather"
#   MAMBA_UNET_SCAN=triton bash .ci/gpu/network_call.sh "--tile BWD_MAXNREG=224" ""
#   bash .ci/gpu/network_call.sh "--cross_scan_impl views" "MAMBA_UNET_SCAN=triton --tile BWD_MAXNREG=224"
#   COMPILE=0 bash .ci/gpu/network_call.sh "--cross_scan_impl gather" "--cross_scan_impl triton"   # eager A/B
# Each variant is one quoted word ("" = none): leading NAME=VALUE words are environment settings for that variant,
# the rest extra scripts.benchmark arguments. The CALL_S (default 540) seconds of the call are split evenly between
# the variants (a compile takes 100-200 s; an eager run 30-50 s). Outputs: $OUT/net_<i>.txt.
set -o pipefail
source .ci/gpu/env.sh
t0=$(date +%s)
each=$(( ${CALL_S:-540} / $# ))
compile=(--compile)
[ "${COMPILE:-1}" = 0 ] && compile=()
i=0
for variant in "$@"; do
  i=$(( i + 1 ))
  settings=()
  arguments=()
  for word in $variant; do
    if [ ${#arguments[@]} -eq 0 ] && [[ $word =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; then settings+=("$word"); else arguments+=("$word"); fi
  done
  echo "== variant $i: ${variant:-(none)}, scan ${MAMBA_UNET_SCAN:-auto}" | tee "$OUT"/net_$i.txt
  timeout "$each" env "${settings[@]}" python3 -m scripts.benchmark --networks mamba_unet --amp bf16 "${compile[@]}" \
    --pipeline_iters 0 "${arguments[@]}" 2>&1 | tail -30 | tee -a "$OUT"/net_$i.txt
  echo "variant $i done at $(( $(date +%s) - t0 )) s"
done
