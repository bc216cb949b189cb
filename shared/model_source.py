"""Where a base model comes from, checked in about a second before anything loads: a local model folder, a GGUF
file (llama.cpp, Ollama, LM Studio), or a hub id that the hub (or its local cache) can serve.

Used by a training's checks, evaluation and the study's spec check alike. Light on purpose: nothing heavy is imported
unless the model is a GGUF file, and then only to ask transformers which architectures it reads.
"""

import functools
import hashlib
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import click

GGUF_SUFFIX = ".gguf"
SOURCE_FILE = "gguf_source.json"  # written into a folder converted from a GGUF file: what it was made from
HUB_CHECK_TIMEOUT_S = 5
LOCAL_PREFIXES = ("/", "./", "../", "~")


class ModelSourceError(click.UsageError):
    """A base model that cannot be loaded, named by the flag or spec key that gave it."""


@dataclass(frozen=True)
class GgufHeader:
    architecture: str
    file_type: str  # the file's declared quantization, e.g. MOSTLY_Q4_1
    tensor_types: tuple[str, ...]  # what its tensors are stored as, e.g. ("F32", "Q4_1", "Q8_0")


def is_gguf(name: str | Path) -> bool:
    return str(name).lower().endswith(GGUF_SUFFIX)


def check_model_source(name: str, label: str = "--base-model") -> dict[str, str]:
    """Refuse a base model that cannot load, saying why; return the params that record a GGUF source (else {}).

    `label` names where the model was given (a flag, a spec key) in the error.
    """
    path = Path(name).expanduser()
    if is_gguf(name):
        if not path.is_file():
            raise ModelSourceError(f"{label} {name}: no such GGUF file")
        stat = path.stat()
        return dict(_checked_gguf(path.resolve(), stat.st_size, stat.st_mtime_ns, label))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"{label} {name} holds no config.json: it is not a model folder")
        source = path / SOURCE_FILE
        return json.loads(source.read_text()) if source.is_file() else {}
    if path.exists():
        raise ModelSourceError(f"{label} {name} is a file, not a model folder or a .gguf file")
    if name.startswith(LOCAL_PREFIXES):
        raise ModelSourceError(f"{label} {name}: no such folder")
    check_hub_model(name, label)
    return {}


@functools.cache
def _checked_gguf(path: Path, size: int, mtime_ns: int, label: str) -> dict[str, str]:
    """A GGUF file's header checked and its sha256 taken once per process and version of the file: a training
    checks it, then loads its tokenizer and model through it (seconds each for the header and the digest)."""
    return gguf_params(path, read_gguf_header(path, label))


def check_hub_model(name: str, label: str) -> None:
    """Accept a hub id that the local hub cache holds or the hub answers for; refuse it in seconds otherwise,
    naming both readings of the name (a folder that is not here, a hub id that cannot be fetched)."""
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    not_here = f"{label} {name}: there is no folder {name} here"
    try:
        cached = try_to_load_from_cache(name, "config.json")
    except HFValidationError:
        raise ModelSourceError(f"{not_here}, and it is not a hub model id either") from None
    if isinstance(cached, str):
        return
    if constants.HF_HUB_OFFLINE:
        raise ModelSourceError(
            f"{not_here}, and HF_HUB_OFFLINE is set while the hub cache holds no copy of {name}: give the path "
            "of a local model folder or .gguf file (scripts/get_model.py makes one)"
        )
    url = f"{constants.ENDPOINT.rstrip('/')}/api/models/{name}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=HUB_CHECK_TIMEOUT_S):
            return
    except urllib.error.HTTPError as err:
        raise ModelSourceError(
            f"{not_here}, and the hub at {constants.ENDPOINT} has no model {name} (HTTP {err.code}: a typo, or a "
            "gated model that needs `hf auth login`)"
        ) from None
    except (urllib.error.URLError, OSError) as err:
        raise ModelSourceError(
            f"{not_here}, and the hub at {constants.ENDPOINT} is unreachable (offline? {getattr(err, 'reason', err)})"
        ) from None


def read_gguf_header(path: Path, label: str = "--base-model") -> GgufHeader:
    """The architecture and quantization of a GGUF file, refused (naming both) where transformers cannot read it."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError) as err:
        raise ModelSourceError(f"{label} {path} is not a readable GGUF file: {err}") from None
    architecture = str(reader.fields["general.architecture"].contents())
    file_type_field = reader.fields.get("general.file_type")
    file_type = gguf.LlamaFileType(file_type_field.contents()).name if file_type_field else "unknown"
    first_of_type = {}
    for tensor in reader.tensors:
        first_of_type.setdefault(tensor.tensor_type, tensor)
    header = GgufHeader(architecture, file_type, tuple(sorted(t.name for t in first_of_type)))
    unreadable = [kind.name for kind, tensor in first_of_type.items() if not _dequantizes(tensor)]
    if not transformers_reads(architecture) or unreadable:
        raise ModelSourceError(
            f"{label} {path}: transformers cannot read this GGUF file (architecture {architecture}, quantization "
            f"{file_type}, tensor types {', '.join(header.tensor_types)}"
            + (f"; no dequantization for {', '.join(unreadable)}" if unreadable else "; that architecture is not one")
            + " it converts): convert it with llama.cpp to a supported quantization (Q8_0, Q4_K, F16) or use the "
            "model's safetensors folder"
        )
    return header


def _dequantizes(tensor) -> bool:
    """Whether the gguf package can unpack this tensor type, tried on the tensor's first row."""
    import gguf

    try:
        gguf.quants.dequantize(tensor.data[:1], tensor.tensor_type)
    except NotImplementedError:
        return False
    return True


def transformers_reads(architecture: str) -> bool:
    """Whether transformers loads GGUF files of this architecture (its own list: it changes between versions)."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    names = {architecture, architecture.replace("-", "_"), architecture.replace("moe", "_moe")}
    return bool(names & (set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}))


def gguf_params(path: Path, header: GgufHeader) -> dict[str, str]:
    """What a run records about a GGUF source: the format, the file, its quantization and its sha256."""
    with path.open("rb") as stream:
        digest = hashlib.file_digest(stream, "sha256").hexdigest()
    return {
        "base_model_format": "gguf",
        "gguf_file": path.name,
        "gguf_architecture": header.architecture,
        "gguf_quant_type": header.file_type,
        "gguf_tensor_types": ",".join(header.tensor_types),
        "gguf_sha256": digest,
    }
