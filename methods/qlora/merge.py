"""Fold the trained adapter into full-precision base weights and save a standalone model folder.

The result loads with `AutoModelForCausalLM.from_pretrained(OUTPUT_DIR)` and serves without PEFT. Its
merged_from.json names the MLflow run that trained the adapter: scripts/evaluate.py logs the merged model's
scores there.
"""

from shared.model.merging import merge_command

if __name__ == "__main__":
    merge_command()
