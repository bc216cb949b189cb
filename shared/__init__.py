"""What every fine-tuning method shares, in rooms by concern; each room's `__init__` says what it holds and what it
must not import.

- at the top, what every stage uses: `cli` (how flags are read), `logs`, `options` (the common flags), `outputs`
  (a training's output directory);
- `data/`: records in, batches out; `model/`: base models and merged adapters; `train/`: a training job, from its
  checks to its last checkpoint; `track/`: what a run records in MLflow, and its energy; `evaluate/`: scoring a
  trained model on a benchmark; `study/`: the comparison of methods, above all of them.

Modules import their heavy dependencies (torch, transformers, mlflow) lazily where they can, so a
script's `--help` answers at once.
"""

from . import logs  # noqa: F401  (its filters drop known library notices before any module imports a library)
