#!/usr/bin/env bash
# One GPU call, from the repository root: Mamba-UNet's compiled bf16 training/inference benchmark once per variant,
#   bash .ci/gpu/network_call.sh "--cross_scan_impl views" "--cross_scan_impl gather"
#   MAMBA_UNET_SCAN=triton bash .ci/gpu/network_call.sh "--tile BWD_MAXNREG=224" ""
#   bash .ci/gpu/network_call.sh "--cross_scan_impl views" "MAMBA_UNET_SCAN=triton --tile BWD_MAXNREG=224"
# Each variant is one quoted word ("" = none): leading NAME=VALUE words are environment settings for that variant,
# the rest extra scripts.benchmark arguments. The 540 s of the call are split evenly between the variants (a compile
# takes 100-200 s). Outputs: $OUT/net_<i>.txt.
set -o pipefail
source .ci/gpu/env.sh
t0=$(date +%s)
each=$(( 540 / $# ))
i=0
for variant in "$@"; do
  i=$(( i + 1 ))
  settings=()
  arguments=()
  for word in $variant; do
    if [ ${#arguments[@]} -eq 0 ] && [[ $word =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; then settings+=("$word"); else arguments+=("$word"); fi
  done
  echo "== variant $i: ${variant:-(none)}, scan ${MAMBA_UNET_SCAN:-auto}" | tee "$OUT"/net_$i.txt
  timeout "$each" env "${settings[@]}" python3 -m scripts.benchmark --networks mamba_unet --amp bf16 --compile \
    --pipeline_iters 0 "${arguments[@]}" 2>&1 | tail -30 | tee -a "$OUT"/net_$i.txt
  echo "variant $i done at $(( $(date +%s) - t0 )) s"
done
