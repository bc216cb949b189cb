"""Models: load a base model and its tokenizer (`loading`), turn a GGUF file into a model folder once (`gguf`), fold
an adapter into full-precision weights (`merging`).

Used by training and evaluation alike, so it imports neither of them, nor MLflow.
"""
