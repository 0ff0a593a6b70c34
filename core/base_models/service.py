"""The base-model registry: only safetensors weights, never remote code."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import re
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from core.base_models import memory
from core.base_models import repository as model_repo
from core.base_models.models import BaseModel
from core.kit.errors import InvalidRequest
from core.kit.settings import get_settings
from core.kit.storage import Storage, file_entries, get_storage, split_s3_uri

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
log = logging.getLogger("loramill.models")


@dataclass(frozen=True)
class ModelInfo:
    architecture: str
    params: int
    context_length: int
    renders_tools: bool
    has_chat_template: bool
    shape: memory.Shape | None = None


def chat_template(path: Path) -> str:
    """The model's chat template as Hugging Face stores it (``chat_template.jinja``, or
    ``chat_template`` in tokenizer_config.json: a string or a list of named templates)."""
    jinja = path / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text()
    config = path / "tokenizer_config.json"
    template = json.loads(config.read_text()).get("chat_template") if config.exists() else None
    if isinstance(template, list):
        return "".join(str(t.get("template", "")) for t in template if isinstance(t, dict))
    return template if isinstance(template, str) else ""


def renders_tools(template: str) -> bool:
    """Whether a chat template renders tool definitions and tool calls: it reads both the
    ``tools`` it is given and the messages' ``tool_calls`` (a template that reads neither
    would silently drop them from the training text)."""
    return bool(re.search(r"\btools\b", template)) and "tool_calls" in template


def gpu_class_for(info: ModelInfo) -> str:
    """The class a job with the default settings needs (a job with its own rank or
    sequence length gets its own: core/jobs/service.py); a model no class can train with
    them is still registered, on the largest, and its jobs are refused at creation."""
    settings = memory.Settings(seq_len=min(memory.Settings().seq_len, info.context_length))
    return memory.gpu_class(info.params, info.shape, settings) or memory.CLASS_ORDER[-1]


def _safetensors_params(path: Path) -> int:
    """Count parameters from a safetensors header without loading any weights."""
    with path.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        if length > 100 * 1024 * 1024:
            raise InvalidRequest(f"{path.name} has an implausible safetensors header")
        header: dict[str, Any] = json.loads(fh.read(length))
    total = 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        count = 1
        for dim in meta["shape"]:
            count *= int(dim)
        total += count
    return total


def inspect_local(path: Path) -> ModelInfo:
    if not path.is_dir():
        raise InvalidRequest(f"{path} is not a directory")
    config_path = path / "config.json"
    if not config_path.exists():
        raise InvalidRequest(f"{path} has no config.json")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        found = f" (found pickle-based {', '.join(pickles)})" if pickles else ""
        raise InvalidRequest(
            f"{path} has no .safetensors weights{found}; loramill loads only safetensors, "
            "because pickle files can run code when loaded. Convert the weights first."
        )
    config = json.loads(config_path.read_text())
    if config.get("auto_map"):
        raise InvalidRequest(
            f"{path}/config.json needs custom code (auto_map); loramill never enables "
            "trust_remote_code"
        )
    architectures = config.get("architectures") or [config.get("model_type", "unknown")]
    return ModelInfo(
        architecture=str(architectures[0]),
        params=sum(_safetensors_params(p) for p in weights),
        context_length=int(config.get("max_position_embeddings", 2048)),
        renders_tools=renders_tools(template := chat_template(path)),
        has_chat_template=bool(template.strip()),
        shape=memory.Shape.of(config),
    )


MODELS_PREFIX = "models/"  # where --upload puts a model: models/<model id>/


def register(
    session: Session, model_id: str, source: str, *, gpu_class: str | None = None,
    upload: bool = False, storage: Storage | None = None,
) -> BaseModel:
    """Register a base model: a local directory every worker has at that path; or, with
    ``upload``, a local directory copied to the bucket (``models/<id>/``); or an
    ``s3://<bucket>/<prefix>`` already there. Models in the bucket are recorded with
    their files' sha256s, and machines fetch them into a verified local cache (no host
    path couples them). Only safetensors weights, never pickles, never remote code."""
    files = None
    if source.startswith("s3://"):
        storage = storage or get_storage()
        with tempfile.TemporaryDirectory(prefix="register-") as tmp:
            info, files, source = _inspect_bucket(storage, source, Path(tmp))
    else:
        path = Path(source).resolve()
        info = inspect_local(path)
        source = str(path)
        if upload:
            storage = storage or get_storage()
            paths = model_files(path)
            files = file_entries(paths)
            prefix = f"{MODELS_PREFIX}{model_id}/"
            for file in paths:
                storage.upload_file(file, prefix + file.name)
            source = f"s3://{storage.bucket}/{prefix}"
    return model_repo.upsert(session, BaseModel(
        id=model_id, source_uri=source, architecture=info.architecture,
        params=info.params, context_length=info.context_length,
        gpu_class=gpu_class or gpu_class_for(info), gpu_class_pinned=gpu_class is not None,
        enabled=True, renders_tools=info.renders_tools,
        has_chat_template=info.has_chat_template,
        shape=dataclasses.asdict(info.shape) if info.shape else None, files=files,
    ))


def model_files(path: Path) -> list[Path]:
    """What of a model directory is stored: every file but pickles (never loaded)."""
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix not in PICKLE_SUFFIXES)


def _inspect_bucket(storage: Storage, uri: str,
                    tmp: Path) -> tuple[ModelInfo, list[dict[str, Any]], str]:
    bucket, prefix = split_s3_uri(uri)
    if bucket != storage.bucket or not prefix:
        raise InvalidRequest(f"{uri}: models are registered from this deployment's bucket, "
                             f"s3://{storage.bucket}/<prefix>", param="source")
    names = [k[len(prefix):] for k in storage.list_keys(prefix)]
    names = [n for n in names if n and "/" not in n]  # the directory's own files
    if not names:
        raise InvalidRequest(f"{uri} holds no files", param="source")
    local = tmp / "model"
    local.mkdir()
    for name in names:
        if Path(name).suffix not in PICKLE_SUFFIXES:
            storage.download_file(prefix + name, local / name)
    info = inspect_local(local)
    return info, file_entries(model_files(local)), f"s3://{bucket}/{prefix}"


def local_dir(base: BaseModel, *, only: tuple[str, ...] | None = None,
              storage: Storage | None = None) -> Path:
    """Where this machine reads the base model: its registered path, or, for a model in
    the bucket, a local cache (``LORAMILL_MODEL_CACHE_DIR``) filled once, every file's
    sha256 checked (:class:`ObjectMismatch` when one differs); ``only``: just the files
    with these names (the API's tokenizer)."""
    if base.files is None:
        return Path(base.source_uri)
    entries = [f for f in base.files if only is None or f["name"] in only]
    _, prefix = split_s3_uri(base.source_uri)
    digest = hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()[:16]
    root = get_settings().model_cache_dir or get_settings().home / "models"
    target = root / base.id.replace("/", "--") / digest
    return (storage or get_storage()).materialize(prefix, entries, target)


TOKENIZER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "tokenizer.model", "chat_template.jinja",
                   "generation_config.json")


@functools.lru_cache(maxsize=8)
def _tokenizer(source: str) -> Any | None:
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(source)
    except Exception as exc:  # not on this machine, or unreadable: estimates approximate
        log.warning("no tokenizer for %s here (%s: %s)", source, type(exc).__name__, exc)
        return None


def tokenizer(base: BaseModel) -> Any | None:
    """The base model's tokenizer where this process can read the model (cached; for a
    model in the bucket, its tokenizer files are fetched), else None."""
    try:
        where = local_dir(base, only=TOKENIZER_FILES)
    except Exception as exc:
        log.warning("no tokenizer for %s here (%s: %s)", base.id, type(exc).__name__, exc)
        return None
    return _tokenizer(str(where))
