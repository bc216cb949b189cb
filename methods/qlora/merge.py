"""Fold the trained adapter into full-precision base weights and save a standalone model folder.

The result loads with `AutoModelForCausalLM.from_pretrained(OUTPUT_DIR)` and serves without PEFT.
"""

from shared.merging import merge_command

if __name__ == "__main__":
    merge_command()
