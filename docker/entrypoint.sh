#!/usr/bin/env bash
# `<method> [flags...]` runs methods/<method>/train.py; `<method> merge [flags...]` runs its merge.py;
# `<script> [flags...]` runs scripts/<script>.py (evaluate, compare, prepare_data, ...).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

methods=()
for script in "$root"/methods/*/train.py; do
    [[ -f $script ]] && methods+=("$(basename "$(dirname "$script")")")
done
scripts=()
for script in "$root"/scripts/*.py; do
    [[ -f $script ]] && scripts+=("$(basename "$script" .py)")
done

usage() {
    echo "usage: <method> [merge] [flags...] | <script> [flags...]" >&2
    echo "       methods: ${methods[*]:-none}; scripts: ${scripts[*]:-none}" >&2
    echo "       <method> --help or <script> --help lists its flags" >&2
}

if [[ $# -eq 0 || $1 == -h || $1 == --help ]]; then
    usage
    [[ $# -gt 0 ]]  # exit 0 for --help, 1 without arguments
    exit
fi

name=$1
shift
if [[ ! $name =~ ^[A-Za-z0-9_-]+$ ]]; then
    echo "unknown method or script '$name'" >&2
    usage
    exit 2
fi
if [[ -f $root/scripts/$name.py ]]; then
    exec python "$root/scripts/$name.py" "$@"
fi
if [[ ! -f $root/methods/$name/train.py ]]; then
    echo "unknown method or script '$name'" >&2
    usage
    exit 2
fi

script=train.py
if [[ ${1:-} == merge ]]; then
    script=merge.py
    shift
fi
if [[ ! -f $root/methods/$name/$script ]]; then
    echo "method '$name' has no $script" >&2
    exit 2
fi

exec python "$root/methods/$name/$script" "$@"
