#!/usr/bin/env bash
# ImageNet (or any train/val class-folder tree) -> the layout `runner --data-root` reads:
#   OUT_DIR/train.{lst,rec,idx}  OUT_DIR/val.{lst,rec,idx}        pass-through
#   OUT_DIR/sz/<N>/train.*        OUT_DIR/sz/<N>/val.*            with --sizes: shorter side N
# Val is labelled with train's class order; a val class missing from train is an error.
# Extra flags (--workers K, --quality Q, --overwrite, --no-progress) go to folder_to_rec.py.
set -euo pipefail

usage() {
    echo "usage: prepare_imagenet.sh RAW_DIR OUT_DIR [--sizes 160,320] [--workers K] [--quality Q] [--overwrite]" >&2
}
die() { echo "prepare_imagenet.sh: error: $*" >&2; exit 2; }

here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-}
if [ -z "$python" ]; then
    if [ -x "$here/../.venv/bin/python" ]; then python="$here/../.venv/bin/python"; else python=python3; fi
fi

[ $# -ge 2 ] || { usage; exit 2; }
raw=$1 out=$2
shift 2
sizes=""
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --sizes) [ $# -ge 2 ] || die "--sizes needs a value such as 160,320"; sizes=$2; shift 2 ;;
        --sizes=*) sizes=${1#--sizes=}; shift ;;
        --workers|--quality) [ $# -ge 2 ] || die "$1 needs a value"; extra+=("$1" "$2"); shift 2 ;;
        --overwrite|--no-progress|--strict) extra+=("$1"); shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option $1" ;;
    esac
done
if [ -n "$sizes" ] && ! [[ "$sizes" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]]; then
    die "--sizes must be positive integers separated by commas, got '$sizes'"
fi
[ -d "$raw/train" ] || die "$raw/train is not a folder (expected RAW_DIR/train/<class>/...)"
[ -d "$raw/val" ] || die "$raw/val is not a folder (expected RAW_DIR/val/<class>/...)"
[ -d "$(dirname "$out")" ] || die "the parent of OUT_DIR $out does not exist"
mkdir -p "$out"

# One set: train first; val then takes train's class list.
pack() {  # pack DEST_DIR [--resize N]
    local dest=$1; shift
    "$python" "$here/folder_to_rec.py" "$raw/train" "$dest/train" "$@" "${extra[@]}"
    "$python" "$here/folder_to_rec.py" "$raw/val" "$dest/val" --no-shuffle \
        --classes "$dest/train.classes.txt" "$@" "${extra[@]}"
}

pack "$out"
if [ -n "$sizes" ]; then
    IFS=, read -ra size_list <<< "$sizes"
    for size in "${size_list[@]}"; do
        mkdir -p "$out/sz/$size"
        pack "$out/sz/$size" --resize "$size"
    done
fi
echo "prepare_imagenet.sh: wrote $out"
