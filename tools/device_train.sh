#!/usr/bin/env bash
# Train on a lent GPU machine: Keras on JAX, no TensorFlow. Fill .device/ here first
# (tools/device_prepare.sh), then call the device tool from the checkout, e.g.
#
#   run(command="bash tools/device_train.sh train/recipes/fernet.toml", carry=[".device"], timeout_s=600)
#
# Arguments after the recipe go to `deepfer-train fit` (--epochs 3 for a first timing, say).
# The fit stops after FIT_SECONDS (default 520) so that its files come back within the call;
# they come back under $OUT/run (recipe.json, history.csv, timing.json, best.keras and, with
# swa_epochs, swa.keras and swa.json), with the log in $OUT/fit.log. Export them here, where
# TensorFlow is:
#
#   deepfer-train export FILES_AT/run --out runs/cand --name deepfer_fernet_int8 --flip-tta \
#       --val-data ../shared/data/fer2013/val.npz --version X.Y.Z
set -euo pipefail
recipe=${1:?usage: tools/device_train.sh RECIPE.toml [fit flags]}
shift
out=${OUT:?OUT is unset: run this through the device tool, which sets it}
py=${PYTHON:-python3}
"$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device/wheels/*.whl
export PYTHONPATH="/tmp/site:$PWD" KERAS_BACKEND=jax PYTHONUNBUFFERED=1
for split in train val; do
  "$py" tools/pack_faces.py unpack ".device/data/$split" "/tmp/fer2013/$split.npz" >/dev/null
done
"$py" -c 'import jax, keras; print("jax", jax.__version__, jax.devices(), "keras", keras.__version__)'
run=/tmp/deepfer-run
rm -rf "$run"
status=0
timeout "${FIT_SECONDS:-520}" "$py" -m train.cli fit --recipe "$recipe" --data /tmp/fer2013/train.npz \
  --val-data /tmp/fer2013/val.npz --out "$run" --verbose 2 "$@" >"$out/fit.log" 2>&1 || status=$?
grep -E "INFO train\.(fit|swa)|Error|error" "$out/fit.log" | tail -n 40 || true
[ "$status" = 124 ] && echo "device_train: stopped after FIT_SECONDS=${FIT_SECONDS:-520}; best.keras is the best epoch so far"
mkdir -p "$out/run"
for f in recipe.json history.csv timing.json best.keras swa.keras swa.json; do
  if [ -f "$run/$f" ]; then cp "$run/$f" "$out/run/"; fi
done
exit "$status"
