#!/usr/bin/env bash
# Fill .device/ (git-ignored) with what tools/device_train.sh needs on a lent GPU machine, which
# has JAX, h5py, OpenCV and numpy but no Keras and reaches no package index (docs/model.md,
# "Training on a GPU machine"):
#   .device/wheels/  Keras (this venv's version) and its two needs the machine lacks, namex and optree;
#   .device/data/    FER2013 train and val as PNG mosaics (tools/pack_faces.py): 52 MiB, under the
#                    64 MiB a device call may carry.
#
#   ./tools/device_prepare.sh                 wheels for the device's Python (3.12)
#   DEVICE_PYTHON=3.11 ./tools/device_prepare.sh   for a rehearsal here, in a venv of this Python
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
pyver=${DEVICE_PYTHON:-3.12}
data=${FER2013:-../shared/data/fer2013}
rm -rf .device/wheels
mkdir -p .device/wheels .device/data
pins=$("$py" -c 'from importlib.metadata import version as v; print(" ".join(f"{p}=={v(p)}" for p in ("keras", "namex", "optree")))')
# shellcheck disable=SC2086
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .device/wheels $pins
for split in train val; do
  "$py" tools/pack_faces.py pack "$data/$split.npz" ".device/data/$split"
done
du -sh .device
