#!/usr/bin/env bash
# Train lossy configs side by side on a lent accelerator machine (session 11, RUNS.md).
#
#   RUNS="lossy_direct_v7:7.0 lossy_direct_v6:8.5" bash onnx_models/training/accelerator_runs.sh
#
# Each NAME:MINUTES trains onnx_models/training/NAME.json with --device cuda for at most
# MINUTES (a device call is limited to 10 minutes, crop loading included), then writes the
# model-only checkpoint (NAME.model.pt) and the logs (NAME.logs.tar) to $OUT, the folder
# whose files come back; a later call continues through a config whose init_from names the
# returned checkpoint.  Full checkpoints with optimizer state are not returned: two of them
# exceed the 64 MiB a call can return.  What the call must carry (ignored paths): .gpudata
# (pack_photos.py; the configs name it as data) and .whl, the cp312 wheels of zstandard and
# constriction, which pillow_nic imports and that machine lacks.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl &&
    export PYTHONPATH=/tmp/site || exit 1
for spec in $RUNS; do
    name=${spec%%:*} minutes=${spec##*:}
    run=onnx_models/training/runs/$name
    mkdir -p "$run"
    PYTHONUNBUFFERED=1 python3 onnx_models/training/train_lossy.py --config "onnx_models/training/$name.json" \
        --device cuda --minutes "$minutes" > "$run/train.out" 2>&1 &
done
wait
for spec in $RUNS; do
    name=${spec%%:*}
    run=onnx_models/training/runs/$name
    tail -3 "$run/train.out"
    python3 -c "import sys, torch; s = torch.load(sys.argv[1], map_location='cpu'); \
torch.save(dict(model=s['model'], config=s['config'], step=s['step']), sys.argv[2])" "$run/checkpoint.pt" "$OUT/$name.model.pt"
    tar -cf "$OUT/$name.logs.tar" -C "$run" log.jsonl train.out
done
