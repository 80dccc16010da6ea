#!/usr/bin/env bash
# Create the TPU VM, or with --queued a queued resource (its node has the same name).
# Usage: tpu/create.sh [--tpu-name N --zone Z --accelerator v5p-32 [--queued] [--spot] [--project P]]
# Parameters come from flags or from $TPU_NAME, $ZONE, $ACCELERATOR_TYPE, $RUNTIME_VERSION,
# $QUEUED=1; the gcloud commands live in jaxlab/launch/submit/tpu.py (--dry-run prints them).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="$root/.venv/bin/python"; [ -x "$py" ] || py=python3
exec "$py" "$root/launch.py" submit --target tpu --action create "$@"
