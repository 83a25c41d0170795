#!/usr/bin/env bash
# Run here (the development machine), from anywhere: fills the ignored .device/ folder that a GPU call carries.
#   .ci/gpu/prepare.sh [--data]
# Copies the GPU runtime (mamba-ssm, monai, ignite, nibabel for torch 2.11 / cu130 / sm_90) and its loader from
# ../shared/device, with --data also the 8-bit ACDC pack (44 MB), and wheels of pytest and fire (the GPU machine has no
# internet and no pytest). Then call the device tool with the carry list this prints.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
shared="$root/../shared/device"
dest="$root/.device"
mkdir -p "$dest/whl"
cp -f "$shared"/gpu_env.sh "$shared"/unpack_acdc.py "$shared"/gpu-site-py312-torch2.11-cu130-sm90.tar.xz "$dest"/
carry='".device/gpu_env.sh", ".device/unpack_acdc.py", ".device/gpu-site-py312-torch2.11-cu130-sm90.tar.xz", ".device/whl"'
if [ "${1:-}" = "--data" ]; then
  cp -f "$shared"/acdc_pack.tar.xz "$dest"/
  carry="$carry, \".device/acdc_pack.tar.xz\""
fi
# pytest for the GPU tests, fire for `python -m monai.bundle`; pure-Python wheels, any Python 3
python3 -m pip download -q --no-deps --only-binary=:all: -d "$dest/whl" \
  pytest==8.4.2 pluggy==1.6.0 iniconfig==2.3.0 termcolor==3.3.0 2>/dev/null \
  || cp -f /opt/pypi/files/{iniconfig-2.3.0,pluggy-1.6.0,pytest-8.4.2,termcolor-3.3.0}-py3-none-any.whl "$dest/whl"/
[ -f "$dest"/whl/fire-0.7.1-py3-none-any.whl ] || python3 -m pip wheel -q fire==0.7.1 --no-deps -w "$dest/whl"
du -sh "$dest"
echo "carry: [$carry]"
