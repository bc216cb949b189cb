"""Training: a method's job from its cheap checks (`checks`, `job`) through the shared loop (`loop`) with early
stopping, divergence and out-of-memory handling, preemption and dev metrics, and the speed benchmark of that loop.

`checks` and `job` import no torch, transformers, PEFT or MLflow, so bad input is refused in a fraction of a
second; only `job` reaches `loop`, lazily, and nothing in `loop` reaches back. Nothing here imports evaluation.
"""
