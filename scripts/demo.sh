#!/usr/bin/env bash
# Offline demo: build a tiny model, turn the bundled HumanEval problems into training data, train LoRA,
# and leave the run in MLflow's local store (./mlflow.db). Needs no GPU and no network; about a minute on 2 cores.
# With --real: the real SmolLM2-135M (fetched once by scripts/get_model.py) on the date task: score the base model,
# train LoRA, score again; a few minutes on 2 cores, offline once the model is there.
set -euo pipefail
cd "$(dirname "$0")/.."

# MLflow 3 opens an experiment on its GenAI view, empty for a training: the link opens the runs table.
where_to_look() {
  python -c 'import json, sys, mlflow; from shared.track.ui_link import where_to_look
print(where_to_look(mlflow.get_tracking_uri(), json.load(open(sys.argv[1]))["experiment_id"]))' "$1/mlflow_run.json"
}

exact_match() {
  python -c 'import json, sys; print(json.load(open(sys.argv[1]))["exact_match"])' "$1/results.json"
}

if [[ "${1:-}" == "--real" ]]; then
  model=models/smollm2-135m
  [[ -f "$model/config.json" ]] || python scripts/get_model.py smollm2-135m --output-dir "$model"
  python scripts/make_date_task.py --output-dir data/dates
  out="outputs/lora-real-demo-$(date +%Y%m%d-%H%M%S)"
  score=(--benchmark exact-match --data data/dates/test.json --limit 40 --max-new-tokens 16 --batch-size 20)
  python scripts/evaluate.py --model "$model" "${score[@]}" --output-dir "$out-base" --experiment-name demo-real
  python methods/lora/train.py \
    --base-model "$model" \
    --dataset data/dates/train.json --dev-dataset data/dates/dev.json \
    --output-dir "$out" \
    --max-length 64 --batch-size 8 --gradient-accumulation 1 \
    --learning-rate 1e-3 --max-steps 30 --eval-steps 10 \
    --experiment-name demo-real
  python scripts/evaluate.py --model "$out" "${score[@]}" --output-dir "$out/eval"
  echo "Exact match on 40 held-out dates: base model $(exact_match "$out-base"), after LoRA $(exact_match "$out/eval")"
  echo "Done. See both runs: $(where_to_look "$out")"
  exit 0
fi

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
echo "Done. See the run: $(where_to_look "$out")"
