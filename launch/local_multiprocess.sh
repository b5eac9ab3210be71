#!/usr/bin/env bash
# Multi-host code paths on one machine: N local CPU processes joined by jax.distributed, each
# with DEVICES_PER_PROCESS fake devices (XLA_FLAGS=--xla_force_host_platform_device_count).
#
#   launch/local_multiprocess.sh NUM_PROCESSES CONFIG WORKDIR [TRAIN_FLAGS...]
#   e.g. launch/local_multiprocess.sh 2 configs/tiny.py /tmp/run --config.sft.steps=2
#
# Optional environment: DEVICES_PER_PROCESS (4), PYTHON (.venv/bin/python of this checkout
# when present, else python3), PORT (a free local port), MODULE (atommem_jax.train; any module
# taking --config, --workdir, --coordinator_address, --num_processes and --process_id),
# LOG_DIR (one log per process; default a new temporary directory). When one process fails,
# the others are stopped and the end of every log is printed.
set -euo pipefail

usage() {
  echo "usage: $0 NUM_PROCESSES CONFIG WORKDIR [TRAIN_FLAGS...]" >&2
  echo "error: $1" >&2
  exit 2
}

(($# >= 3)) || usage "expected NUM_PROCESSES, CONFIG and WORKDIR, got $# argument(s)"
num_processes="$1" config="$2" workdir="$3"
shift 3
[[ "${num_processes}" =~ ^[1-9][0-9]*$ ]] ||
  usage "NUM_PROCESSES=${num_processes}: expected a positive integer"
[[ -f "${config%%:*}" ]] || usage "CONFIG=${config}: no file ${config%%:*}"
devices="${DEVICES_PER_PROCESS:-4}"
[[ "${devices}" =~ ^[1-9][0-9]*$ ]] ||
  usage "DEVICES_PER_PROCESS=${devices}: expected a positive integer"

repo_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [[ -z "${python}" ]]; then
  python="python3"
  [[ -x "${repo_dir}/.venv/bin/python" ]] && python="${repo_dir}/.venv/bin/python"
fi
free_port='import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
port="${PORT:-$("${python}" -c "${free_port}")}"
module="${MODULE:-atommem_jax.train}"
log_dir="${LOG_DIR:-$(mktemp -d -t atommem-local-XXXXXX)}"
mkdir -p "${log_dir}"

echo "atommem: ${num_processes} processes x ${devices} CPU devices, coordinator" \
  "127.0.0.1:${port}, logs in ${log_dir}"
pids=()
for ((process_id = 0; process_id < num_processes; process_id++)); do
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=${devices}" \
    "${python}" -m "${module}" --config "${config}" --workdir "${workdir}" \
    --coordinator_address "127.0.0.1:${port}" --num_processes "${num_processes}" \
    --process_id "${process_id}" "$@" >"${log_dir}/process_${process_id}.log" 2>&1 &
  pids+=("$!")
done
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM

for _ in "${pids[@]}"; do
  if ! wait -n; then
    echo "error: a process failed; stopping the others. Last lines of each log:" >&2
    kill "${pids[@]}" 2>/dev/null || true
    wait || true
    for log in "${log_dir}"/process_*.log; do
      echo "==> ${log} <==" >&2
      tail -n 20 "${log}" >&2
    done
    exit 1
  fi
done
echo "atommem: all ${num_processes} processes finished; logs in ${log_dir}"
