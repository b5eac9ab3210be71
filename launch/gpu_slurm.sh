#!/usr/bin/env bash
# AtomMem training on N Slurm nodes x 8 GPUs: one process per node, JAX multi-host over NCCL.
#
#   CONFIG=configs/qwen3_8b_a800.py WORKDIR=/shared/runs/a800 \
#       sbatch --nodes=2 launch/gpu_slurm.sh --config.model.hf_dir=/models/Qwen3-8B
#
# Required environment: CONFIG (config file, optionally FILE:ARG), WORKDIR (a run directory
# that every node can write: checkpoints are written by all processes).
# Optional: REPO_DIR (where to run; default the submission directory), PYTHON (python3),
# GPUS_PER_NODE (8), COORDINATOR_PORT (derived from the job id), XLA_FLAGS (appended to ours),
# XLA_PYTHON_CLIENT_MEM_FRACTION (0.92). Arguments after the script go to the trainer.
#
# JAX finds the process count and id from Slurm; this script gives it the coordinator
# (the first node) and all 8 local GPUs (JAX would otherwise give each process one GPU,
# the one numbered by its SLURM_LOCALID).
#SBATCH --job-name=atommem
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --exclusive
#SBATCH --output=atommem-%j.out
set -euo pipefail

: "${CONFIG:?set CONFIG to a config file, e.g. CONFIG=configs/qwen3_8b_a800.py sbatch ...}"
: "${WORKDIR:?set WORKDIR to a run directory that every node can write}"
: "${SLURM_JOB_ID:?not inside a Slurm job: submit with sbatch (or run inside salloc)}"
: "${SLURM_JOB_NODELIST:?not inside a Slurm job: submit with sbatch (or run inside salloc)}"

cd "${REPO_DIR:-${SLURM_SUBMIT_DIR:-.}}"
if [[ ! -f "${CONFIG%%:*}" ]]; then
  echo "error: CONFIG=${CONFIG}: no file ${CONFIG%%:*} (relative to $(pwd); set REPO_DIR)" >&2
  exit 2
fi
PYTHON="${PYTHON:-python3}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"

coordinator_host="$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | head -n 1)"
JAX_COORDINATOR_ADDRESS="${coordinator_host}:${COORDINATOR_PORT:-$((20000 + SLURM_JOB_ID % 20000))}"
JAX_LOCAL_DEVICE_IDS="$(seq -s, 0 $((GPUS_PER_NODE - 1)))"
XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true ${XLA_FLAGS:-}"
XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
export JAX_COORDINATOR_ADDRESS JAX_LOCAL_DEVICE_IDS XLA_FLAGS XLA_PYTHON_CLIENT_MEM_FRACTION

echo "atommem: ${SLURM_JOB_NUM_NODES:-?} nodes x ${GPUS_PER_NODE} GPUs, coordinator" \
  "${JAX_COORDINATOR_ADDRESS}, config ${CONFIG}, workdir ${WORKDIR}"
srun --ntasks-per-node=1 --kill-on-bad-exit=1 \
  "${PYTHON}" -m atommem_jax.train --config "${CONFIG}" --workdir "${WORKDIR}" --distributed "$@"
