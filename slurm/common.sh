# shellcheck shell=bash
# Sourced by slurm/*.sbatch from the repo root, after `set -euo pipefail`: offline Hugging Face defaults, and
# run_preemptible, which turns a preemption signal into checkpoint + requeue + resume. Outside Slurm (a wrapper
# run with bash) the single-process wrappers run as plain local jobs; the others say they need sbatch.

# Compute nodes are often offline: use the local HF cache unless the caller set these.
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"
export TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"

# shared/train/preemption.py: the trainer saved a checkpoint and stopped on a signal; rerun with --resume.
PREEMPTED_EXIT_CODE=75
# The repo this file belongs to: a study's array job runs from the study's folder, not from the repo root.
WORKBENCH_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# How messages name this job.
if [[ -n ${SLURM_JOB_ID:-} ]]; then
    JOB="job ${SLURM_JOB_ID}"
else
    JOB="local job (pid $$)"
fi

# require_slurm WHY: stop a wrapper that cannot run outside Slurm, saying why and what to run instead.
require_slurm() {
    if [[ -z ${SLURM_JOB_ID:-} ]]; then
        echo "${0##*/} must be submitted with sbatch: $1" >&2
        exit 2
    fi
}

# flag_value FLAG ARGS...: the value of FLAG (e.g. --output-dir) in the trainer's arguments ("" when absent).
flag_value() {
    local flag=$1 previous=""
    shift
    for arg in "$@"; do
        case $arg in
            "$flag"=*) echo "${arg#"$flag"=}"; return ;;
        esac
        if [[ $previous == "$flag" ]]; then
            echo "$arg"
            return
        fi
        previous=$arg
    done
}

# run_preemptible COMMAND...
# Runs COMMAND (a trainer and its flags, or srun starting one) in the background, so that this shell's traps
# run while it trains, and forwards SIGUSR1 and SIGTERM to it. The trainer checkpoints at the next step
# boundary and exits with PREEMPTED_EXIT_CODE. After SIGUSR1 (`#SBATCH --signal=B:USR1@...` before the time
# limit, or `scancel --batch --signal=USR1 JOB`) the job requeues itself; after SIGTERM (scancel, a
# scheduler's preemption or time limit) Slurm decides whether it comes back. A rerun (SLURM_RESTART_COUNT > 0)
# adds --resume once the output directory holds the run file: it continues from the last checkpoint in the
# same MLflow run (from step 0 if the first attempt stopped before its first checkpoint). Outside Slurm a signal
# still checkpoints and stops the trainer, and nothing requeues it: rerun the command with --resume.
run_preemptible() {
    local cmd=("$@")
    local output_dir
    output_dir="$(flag_value --output-dir "$@")"
    if [[ -z ${SLURM_JOB_ID:-} ]]; then
        echo "Not under Slurm (no SLURM_JOB_ID): running as a plain local job, ${JOB}" >&2
    fi
    if (( ${SLURM_RESTART_COUNT:-0} > 0 )) && [[ -n $output_dir && -f $output_dir/mlflow_run.json ]]; then
        echo "restart ${SLURM_RESTART_COUNT} of ${JOB}: resuming from ${output_dir}"
        cmd+=(--resume)
    fi

    signalled=""
    child=""
    trap 'signalled=USR1; kill -s USR1 "$child" 2>/dev/null || true' USR1
    trap 'signalled=TERM; kill -s TERM "$child" 2>/dev/null || true' TERM

    "${cmd[@]}" &
    child=$!
    local status
    # A trapped signal ends `wait` early (status 128+n) while the trainer is still saving: wait until it exits.
    while true; do
        status=0
        wait "$child" || status=$?
        kill -0 "$child" 2>/dev/null || break
    done
    trap - USR1 TERM

    if [[ -n $signalled && $status -eq $PREEMPTED_EXIT_CODE && -z ${SLURM_JOB_ID:-} ]]; then
        echo "${JOB}: stopped on SIG${signalled} after a checkpoint; rerun the same command with --resume to go on" >&2
    elif [[ $signalled == USR1 && $status -ne 0 ]]; then
        echo "${JOB}: preempted on SIGUSR1 (trainer exit status ${status}); requeueing"
        scontrol requeue "$SLURM_JOB_ID"
        return "$PREEMPTED_EXIT_CODE"
    fi
    if (( status != 0 && status != PREEMPTED_EXIT_CODE )) && [[ -n $output_dir && -f $output_dir/mlflow_run.json ]]; then
        fail_unended_run "$output_dir" "$status" "$@"
    fi
    return "$status"
}

# fail_unended_run OUTPUT_DIR STATUS TRAINER_ARGS...
# A trainer killed outright (SIGKILL: out of memory, a node failure) could not end its MLflow run, which would
# stay RUNNING forever: end it FAILED with the reason. A run the trainer ended itself (an error) stays as it is.
fail_unended_run() {
    local output_dir=$1 status=$2
    shift 2
    local reason="trainer exited with status ${status}"
    if (( status > 128 )); then
        reason="trainer killed by signal $((status - 128)) (exit status ${status})"
    fi
    local mark=(python "$WORKBENCH_REPO/scripts/runs.py" mark-failed --output-dir "$output_dir")
    mark+=(--reason "${JOB}: ${reason}")
    local tracking_uri arg
    tracking_uri="$(flag_value --tracking-uri "$@")"
    for arg in "$@"; do  # a study's job line passes the URI through `env MLFLOW_TRACKING_URI=... python ...`
        if [[ $arg == MLFLOW_TRACKING_URI=* ]]; then
            tracking_uri=${arg#MLFLOW_TRACKING_URI=}
        fi
    done
    if [[ -n $tracking_uri ]]; then
        mark+=(--tracking-uri "$tracking_uri")
    fi
    "${mark[@]}" || echo "${JOB}: the MLflow run of ${output_dir} is left RUNNING (see above);" \
        "scripts/runs.py reap will end it"
}
