# Source on the GPU machine, from the repository root: `source .ci/gpu/env.sh [DATA_DEST]`.
# Installs the carried pytest/fire wheels into /tmp/site, unpacks the GPU runtime (and with DATA_DEST the ACDC pack,
# SSL4MIS layout, there) through .device/gpu_env.sh, and puts the repository on PYTHONPATH.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .device/whl/*.whl
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
source .device/gpu_env.sh "$@"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PYTHONPATH
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.limit,memory.total --format=csv,noheader
