#!/usr/bin/env bash
# Start `launch.py run EXPERIMENT ...` on every worker, detached; logs in ~/jaxlab/logs/.
# Usage: tpu/run.sh [--tpu-name N --zone Z] EXPERIMENT [key=value ...]
# Parameters come from flags or from $TPU_NAME, $ZONE, $ACCELERATOR_TYPE, $RUNTIME_VERSION,
# $QUEUED=1; the gcloud commands live in jaxlab/launch/submit/tpu.py (--dry-run prints them).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="$root/.venv/bin/python"; [ -x "$py" ] || py=python3
exec "$py" "$root/launch.py" submit --target tpu --action run "$@"
