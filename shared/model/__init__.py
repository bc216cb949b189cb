"""Models: load a base model and its tokenizer (`loading`), fold an adapter into full-precision weights (`merging`).

Used by training and evaluation alike, so it imports neither of them, nor MLflow.
"""
