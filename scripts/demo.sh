#!/usr/bin/env bash
# Offline demo: build a tiny model, turn the bundled HumanEval problems into training data, train LoRA,
# and leave the run in MLflow's local store (./mlflow.db). Needs no GPU and no network; about a minute on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

python scripts/make_tiny_model.py models/tiny-qwen2
python scripts/prepare_data.py --format humaneval --output data/humaneval.json
out="outputs/lora-demo-$(date +%Y%m%d-%H%M%S)"
python methods/lora/train.py \
  --base-model models/tiny-qwen2 \
  --dataset data/humaneval.json \
  --output-dir "$out" \
  --max-length 512 --batch-size 4 --gradient-accumulation 2 \
  --learning-rate 1e-2 --max-steps 60 --eval-steps 20 \
  --experiment-name demo
# MLflow 3 opens an experiment on its GenAI view, empty for a training: the link opens the runs table.
echo "Done. See the run: $(python -c 'import json, sys, mlflow; from shared.track.ui_link import where_to_look
print(where_to_look(mlflow.get_tracking_uri(), json.load(open(sys.argv[1]))["experiment_id"]))' "$out/mlflow_run.json")"
