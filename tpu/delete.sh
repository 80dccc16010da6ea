#!/usr/bin/env bash
# Delete the TPU VM, or with --queued the queued resource and its node.
# Usage: tpu/delete.sh [--tpu-name N --zone Z [--queued]]
# Parameters come from flags or from $TPU_NAME, $ZONE, $ACCELERATOR_TYPE, $RUNTIME_VERSION,
# $QUEUED=1; the gcloud commands live in jaxlab/launch/submit/tpu.py (--dry-run prints them).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="$root/.venv/bin/python"; [ -x "$py" ] || py=python3
exec "$py" "$root/launch.py" submit --target tpu --action delete "$@"
