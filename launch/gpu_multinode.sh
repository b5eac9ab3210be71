#!/usr/bin/env bash
# AtomMem training on several GPU hosts without a scheduler: one process per host over ssh.
#
#   launch/gpu_multinode.sh HOSTFILE CONFIG WORKDIR [TRAIN_FLAGS...]
#   e.g. launch/gpu_multinode.sh hosts.txt configs/qwen3_8b_a800.py /shared/runs/a800 \
#            --config.model.hf_dir=/models/Qwen3-8B
#
# HOSTFILE lists one host per line (blank lines and #-comments are skipped); the first host
# is the coordinator and process 0, and must be reachable under that name from the others.
# Every host needs the same checkout at REPO_DIR and passwordless ssh from here.
# Optional environment: REPO_DIR (default: this checkout's absolute path), PYTHON (python3,
# on the hosts), PORT (coordinator port, 12355), SSH (ssh), LOG_DIR (where each host's output
# goes; default logs/multinode-DATE), XLA_FLAGS (appended to ours),
# XLA_PYTHON_CLIENT_MEM_FRACTION (0.92). When one process fails, the others are stopped.
set -euo pipefail

usage() {
  echo "usage: $0 HOSTFILE CONFIG WORKDIR [TRAIN_FLAGS...]" >&2
  echo "error: $1" >&2
  exit 2
}

(($# >= 3)) || usage "expected HOSTFILE, CONFIG and WORKDIR, got $# argument(s)"
hostfile="$1" config="$2" workdir="$3"
shift 3
[[ -f "${hostfile}" ]] || usage "HOSTFILE ${hostfile}: no such file"
hosts=()
while read -r line; do
  line="${line%%#*}"
  line="${line//[[:space:]]/}"
  [[ -n "${line}" ]] && hosts+=("${line}")
done <"${hostfile}"
((${#hosts[@]} >= 1)) || usage "HOSTFILE ${hostfile} lists no hosts"

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_dir="${REPO_DIR:-$(dirname "${script_dir}")}"
python="${PYTHON:-python3}"
port="${PORT:-12355}"
ssh_command="${SSH:-ssh}"
log_dir="${LOG_DIR:-logs/multinode-$(date +%Y%m%d-%H%M%S)}"
xla_flags="--xla_gpu_enable_latency_hiding_scheduler=true ${XLA_FLAGS:-}"
mem_fraction="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
mkdir -p "${log_dir}"

coordinator="${hosts[0]}:${port}"
echo "atommem: ${#hosts[@]} hosts, coordinator ${coordinator}, logs in ${log_dir}"
pids=()
for process_id in "${!hosts[@]}"; do
  host="${hosts[${process_id}]}"
  remote="$(printf '%q ' cd "${repo_dir}")&& $(printf '%q ' env \
    "XLA_FLAGS=${xla_flags}" "XLA_PYTHON_CLIENT_MEM_FRACTION=${mem_fraction}" \
    "${python}" -m atommem_jax.train --config "${config}" --workdir "${workdir}" \
    --coordinator_address "${coordinator}" --num_processes "${#hosts[@]}" \
    --process_id "${process_id}" "$@")"
  # -tt: a remote terminal, so that stopping this ssh also stops the remote process.
  "${ssh_command}" -tt -o BatchMode=yes "${host}" "${remote}" \
    </dev/null >"${log_dir}/${process_id}-${host}.log" 2>&1 &
  pids+=("$!")
done
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM

for _ in "${pids[@]}"; do
  if ! wait -n; then
    echo "error: a process failed; stopping the others. Last lines of each log:" >&2
    kill "${pids[@]}" 2>/dev/null || true
    wait || true
    for log in "${log_dir}"/*.log; do
      echo "==> ${log} <==" >&2
      tail -n 20 "${log}" >&2
    done
    exit 1
  fi
done
echo "atommem: all ${#hosts[@]} processes finished"
