#!/usr/bin/env bash
# Follow the newest log (of EXPERIMENT's run, if given) on one worker; Ctrl-C to leave.
# Usage: tpu/logs.sh [--tpu-name N --zone Z] [--worker 0|1|..|all] [EXPERIMENT]
# Parameters come from flags or from $TPU_NAME, $ZONE, $ACCELERATOR_TYPE, $RUNTIME_VERSION,
# $QUEUED=1; the gcloud commands live in jaxlab/launch/submit/tpu.py (--dry-run prints them).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="$root/.venv/bin/python"; [ -x "$py" ] || py=python3
exec "$py" "$root/launch.py" submit --target tpu --action logs "$@"
