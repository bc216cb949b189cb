"""Data: read and validate {input, output} records (`records`), convert source formats (`formats`) from local or
cached sources (`sources`), and turn records into batches (`batching`).

`records`, `formats` and `sources` are light (no torch, no transformers, no MLflow): a training's checks read data
through them before anything heavy loads. Nothing here imports training, tracking or evaluation.
"""
