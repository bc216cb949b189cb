"""One logging setup for every script: timestamped lines, written once per job, without known library chatter.

Under a launcher (torchrun, deepspeed) every rank runs the same code: rank 0 logs at INFO, the others at WARNING,
so each message reaches the terminal once while a problem on any rank still shows.
"""

import logging
import os
import warnings

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# (logger, start of the message): notices about the machine that hold nothing to act on.
NOISE = (
    # bitsandbytes on a CPU with AVX512-BF16 looks for an optional faster 4-bit kernel and falls back to its own.
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"),
    ("DeepSpeed", "Setting ds_accelerator to"),
    ("DeepSpeed", "Setting accelerator to"),
)

# PEFT 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` each time it wraps a model: nothing of ours.
DEPRECATED_BY_A_LIBRARY = "`is_gradient_checkpointing` is deprecated"


class DropMessages(logging.Filter):
    """Drops the records whose message template starts with one of `prefixes`."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_library_noise() -> None:
    """Attach the filters to the loggers named in NOISE; they act once the library logs, even if imported later."""
    warnings.filterwarnings("ignore", message=DEPRECATED_BY_A_LIBRARY, category=FutureWarning)
    # MLflow draws a progress bar for every artifact it downloads (a study's report reads one per final run);
    # read on each download, so a user's own setting still wins.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in {name for name, _ in NOISE}:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) for f in logger.filters):
            logger.addFilter(DropMessages(tuple(prefix for owner, prefix in NOISE if owner == name)))


def process_rank() -> int:
    """This process's global rank under a launcher, 0 without one."""
    return int(os.environ.get("RANK", "0"))


def setup_logging() -> None:
    """Timestamped lines on stderr at INFO on rank 0 and WARNING on the other ranks, library noise dropped."""
    quiet_library_noise()
    logging.basicConfig(level=logging.INFO if process_rank() == 0 else logging.WARNING, format=FORMAT)


quiet_library_noise()  # on import: bitsandbytes logs its notice while it is being imported
