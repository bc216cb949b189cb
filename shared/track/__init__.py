"""Tracking: the MLflow run of a training (`mlflow_run`), its outbox for a lost server, reaping of killed runs,
provenance, credential redaction, the energy meter, and the costs a run records over all its segments (`costs`).

`redaction` is light (a training's checks use it). Nothing here imports training, evaluation or the study.
"""
