"""Evaluation: benchmarks and their tasks, generating answers, running them in the sandbox, scores, contamination,
and the evaluation job that logs them to MLflow.

It does not import training (`shared.train`): a model is scored the same however it was trained.
"""
