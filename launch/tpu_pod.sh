#!/usr/bin/env bash
# AtomMem training on a Cloud TPU slice (e.g. v5p-32: 4 hosts x 4 chips): the same command on
# every worker over `gcloud compute tpus tpu-vm ssh --worker=all`.
#
#   TPU_NAME=my-v5p-32 ZONE=us-east5-a launch/tpu_pod.sh CONFIG WORKDIR [TRAIN_FLAGS...]
#   e.g. ... launch/tpu_pod.sh configs/qwen3_8b_tpu.py gs://my-bucket/runs/tpu \
#            --config.model.hf_dir=/home/me/Qwen3-8B
#
# Required environment: TPU_NAME, ZONE. Optional: PROJECT (gcloud's default project
# otherwise), REPO_DIR (the checkout on every worker, relative to the home directory or
# absolute; default atommem-jax), PYTHON (python3), LIBTPU_INIT_ARGS (passed to the workers).
# Every worker needs the checkout, the package installed (pip install -e '.[tpu,gcs]'), the
# model directory and the data files; WORKDIR must be a directory that every worker can write
# or a gs:// URL.
# JAX finds the coordinator and process ids from the TPU metadata (--distributed).
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME to the TPU VM name (gcloud compute tpus tpu-vm list)}"
: "${ZONE:?set ZONE to the TPU zone, e.g. ZONE=us-east5-a}"
if (($# < 2)); then
  echo "usage: TPU_NAME=... ZONE=... $0 CONFIG WORKDIR [TRAIN_FLAGS...]" >&2
  echo "error: expected CONFIG and WORKDIR, got $# argument(s)" >&2
  exit 2
fi
config="$1" workdir="$2"
shift 2

gcloud_flags=(--zone="${ZONE}" --worker=all)
if [[ -n "${PROJECT:-}" ]]; then
  gcloud_flags+=(--project="${PROJECT}")
fi
remote="$(printf '%q ' cd "${REPO_DIR:-atommem-jax}")&& $(printf '%q ' env \
  "LIBTPU_INIT_ARGS=${LIBTPU_INIT_ARGS:-}" "${PYTHON:-python3}" -m atommem_jax.train \
  --config "${config}" --workdir "${workdir}" --distributed "$@")"

echo "atommem: ${TPU_NAME} (${ZONE}), all workers: ${remote}"
gcloud compute tpus tpu-vm ssh "${TPU_NAME}" "${gcloud_flags[@]}" --command="${remote}"
