#!/usr/bin/env bash
# One GPU call, from the repository root: Mamba-UNet's compiled bf16 training/inference benchmark once per variant,
#   bash .ci/gpu/network_call.sh "--cross_scan_impl views" "--cross_scan_impl gather"
#   MAMBA_UNET_SCAN=triton bash .ci/gpu/network_call.sh "--tile BWD_MAXNREG=224" ""
# Each variant's extra scripts.benchmark arguments are one quoted word ("" = none); the 540 s of the call are split
# evenly between them (a compile takes 100-200 s). Outputs: $OUT/net_<i>.txt.
set -o pipefail
source .ci/gpu/env.sh
t0=$(date +%s)
each=$(( 540 / $# ))
i=0
for variant in "$@"; do
  i=$(( i + 1 ))
  echo "== variant $i: ${variant:-(none)}, scan ${MAMBA_UNET_SCAN:-auto}" | tee "$OUT"/net_$i.txt
  # shellcheck disable=SC2086  # a variant is several arguments
  timeout "$each" python3 -m scripts.benchmark --networks mamba_unet --amp bf16 --compile --pipeline_iters 0 \
    $variant 2>&1 | tail -30 | tee -a "$OUT"/net_$i.txt
  echo "variant $i done at $(( $(date +%s) - t0 )) s"
done
