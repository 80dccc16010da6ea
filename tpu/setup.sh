#!/usr/bin/env bash
# Copy this checkout (uncommitted edits included) to every worker and pip install -e '.[tpu]'.
# Usage: tpu/setup.sh [--tpu-name N --zone Z [--project P]]
# Parameters come from flags or from $TPU_NAME, $ZONE, $ACCELERATOR_TYPE, $RUNTIME_VERSION,
# $QUEUED=1; the gcloud commands live in jaxlab/launch/submit/tpu.py (--dry-run prints them).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="$root/.venv/bin/python"; [ -x "$py" ] || py=python3
exec "$py" "$root/launch.py" submit --target tpu --action setup "$@"
