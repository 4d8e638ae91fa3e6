#!/bin/bash
# A thread-chunks sweep as a Slurm batch job: Ray's head on the first node of the allocation,
# a Ray worker on each other node (through srun), the checkpoint on shared storage, and the
# job requeued and resumed when it is preempted or runs out of time.
#
#   sbatch examples/slurm_sweep.sh                 # on a cluster
#   bash examples/slurm_sweep.sh --rows 40         # anywhere else: a local Ray
#
# Arguments go to examples/slurm_sweep.py. CHECKPOINT names the checkpoint (default:
# sweep.ckpt in the directory the job was submitted from).
#
#SBATCH --job-name=thread-chunks-sweep
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=0
#SBATCH --time=01:00:00
#SBATCH --requeue
#SBATCH --signal=B:TERM@120
#SBATCH --open-mode=append
#SBATCH --output=thread-chunks-sweep-%j.out

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -n "${SLURM_JOB_ID:-}" && -n "${SLURM_SUBMIT_DIR:-}" && -f "$SLURM_SUBMIT_DIR/examples/slurm_sweep.py" ]]; then
    here="$SLURM_SUBMIT_DIR/examples"  # sbatch runs a copy of this script elsewhere
fi
checkpoint=${CHECKPOINT:-${SLURM_SUBMIT_DIR:-$PWD}/sweep.ckpt}
ray_pids=()

if [[ -n "${SLURM_JOB_ID:-}" ]] && command -v srun > /dev/null; then
    mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
    head=${nodes[0]}
    port=${RAY_PORT:-6379}
    head_ip=$(srun --nodes=1 --ntasks=1 -w "$head" hostname --ip-address | awk '{print $1}')
    cpus=${SLURM_CPUS_PER_TASK:-1}
    # each Ray node is a job step of its own, kept running (--block) until the job ends
    srun --nodes=1 --ntasks=1 -w "$head" --overlap \
        ray start --head --node-ip-address="$head_ip" --port="$port" --num-cpus="$cpus" \
        --include-dashboard=false --block &
    ray_pids+=($!)
    sleep 15
    for node in "${nodes[@]:1}"; do
        srun --nodes=1 --ntasks=1 -w "$node" --overlap \
            ray start --address="$head_ip:$port" --num-cpus="$cpus" --block &
        ray_pids+=($!)
    done
    sleep 15
    export RAY_ADDRESS="$head_ip:$port"
    echo "Ray on ${#nodes[@]} node(s), head $head ($RAY_ADDRESS); checkpoint $checkpoint"
else
    export RAY_ADDRESS=${RAY_ADDRESS:-local}  # thread-chunks starts a local Ray
    echo "no Slurm allocation here: a local Ray; checkpoint $checkpoint"
fi

# The driver runs in the background so that this shell, which Slurm signals (--signal=B:TERM
# two minutes before the time limit, scancel, preemption), can pass SIGTERM on to it:
# thread-chunks then stops the run as Ctrl-C does and keeps the checkpoint consistent.
python "$here/slurm_sweep.py" --path "$checkpoint" "$@" &
driver=$!
stopped=0
trap 'stopped=1; kill -TERM "$driver" 2> /dev/null || true' TERM
status=0
wait "$driver" || status=$?
if (( stopped )); then
    wait "$driver" || status=$?  # the first wait returned when the signal came
fi
for pid in "${ray_pids[@]}"; do
    kill "$pid" 2> /dev/null || true
done
if (( stopped )) && [[ -n "${SLURM_JOB_ID:-}" ]]; then
    echo "stopped by SIGTERM: requeueing job $SLURM_JOB_ID; it resumes from $checkpoint"
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
