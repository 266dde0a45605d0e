#!/usr/bin/env bash
# Refit the committed <gpu>-aic profiles from NVIDIA AIConfigurator's measured tables (docs/calibration.md).
# Needs the optional extra: pip install -e '.[silicon]'. Prints each fit's report; about 3 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PARATUNE=${PARATUNE:-paratune}
for pair in a100_sxm:a100 h100_sxm:h100 h200_sxm:h200 b200_sxm:b200 b300_sxm:b300 gb200:gb200 gb300:gb300 \
            l40s:l40s rtx_pro_6000_server:rtx-pro-6000; do
    system=${pair%%:*}
    gpu=${pair##*:}
    "$PARATUNE" calibrate fit --from aiconfigurator --system "$system" -o "configs/profiles/$gpu-aic.yaml"
done
