"""What every fine-tuning method shares: flags, data, the training loop, early stopping, energy and tracking.

Modules import their heavy dependencies (torch, transformers, mlflow) lazily where they can, so a
script's `--help` answers at once.
"""

from . import logs  # noqa: F401  (its filters drop known library notices before any module imports a library)
