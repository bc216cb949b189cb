#!/usr/bin/env bash
# `<method> [flags...]` runs methods/<method>/train.py; `<method> merge [flags...]` runs its merge.py.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

methods=()
for script in "$root"/methods/*/train.py; do
    [[ -f $script ]] && methods+=("$(basename "$(dirname "$script")")")
done

usage() {
    echo "usage: <method> [merge] [flags...]   (methods: ${methods[*]:-none})" >&2
    echo "       <method> --help lists a method's flags" >&2
}

if [[ $# -eq 0 || $1 == -h || $1 == --help ]]; then
    usage
    [[ $# -gt 0 ]]  # exit 0 for --help, 1 without arguments
    exit
fi

method=$1
shift
if [[ ! $method =~ ^[A-Za-z0-9_-]+$ || ! -f $root/methods/$method/train.py ]]; then
    echo "unknown method '$method'; methods: ${methods[*]:-none}" >&2
    exit 2
fi

script=train.py
if [[ ${1:-} == merge ]]; then
    script=merge.py
    shift
fi
if [[ ! -f $root/methods/$method/$script ]]; then
    echo "method '$method' has no $script" >&2
    exit 2
fi

exec python "$root/methods/$method/$script" "$@"
