"""Triton's ``config.pbtxt``, read as a steadyserve ``ModelConfig``.

A Triton model repository works unchanged: a model directory with a
``config.pbtxt`` (Triton's ``inference.ModelConfig`` in protobuf text format)
and no ``config.yaml`` is parsed with the message of protos/model_config.proto,
which declares every field Triton does, then mapped onto the one schema in
config.py and validated by it, so every rule of config.yaml applies.

What is honoured: name (must be the directory's), platform/backend (ONNX
Runtime only), max_batch_size, input/output name, data_type and dims,
version_policy, default_model_filename, dynamic_batching (preferred sizes,
queue delay, priority levels, default priority, queue sizes, the default
timeout with timeout_action REJECT) and instance_group (count, kind, the first
GPU). Every other field that is set is named in one warning at load: the
parsed message is walked against the fields the mapping used, so no field can
be dropped without a word.
"""

from __future__ import annotations

import ast
import functools
import logging
import re
from importlib import resources
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pool, message_factory, text_format
from google.protobuf.message import Message

from .config import MAX_INSTANCES, BatchingConfig, ModelConfig, model_config_from_mapping
from .errors import ConfigError

log = logging.getLogger("steadyserve.repository")

CONFIG_FILE = "config.pbtxt"
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
_SERVED = (
    f'steadyserve serves ONNX models with ONNX Runtime (platform "{PLATFORM}" and/or '
    f'backend "{BACKEND}")'
)

# Enum numbers of the generated message (Triton's, checked by tests/test_proto_compat.py).
_KIND_AUTO, _KIND_GPU, _KIND_CPU = 0, 1, 2
_DELAY = 1


@functools.cache
def _model_config_class() -> type[Message]:
    """``inference.ModelConfig`` from a private descriptor pool.

    Not ``steadyserve._proto.model_config_pb2``: importing that registers
    ``inference.*`` in protobuf's default pool, which cannot also hold
    tritonclient's messages of the same names, and an in-process Runtime may
    share its process with tritonclient. The generated module's serialized
    descriptor is read from its source (never executed) into a pool of our own.
    """
    source = (
        resources.files(__package__)
        .joinpath("_proto")
        .joinpath("model_config_pb2.py")
        .read_text(encoding="utf-8")
    )
    serialized = None
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "AddSerializedFile"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, bytes)
        ):
            serialized = node.args[0].value
            break
    if serialized is None:  # the generator changed its output: a packaging bug
        raise RuntimeError("steadyserve/_proto/model_config_pb2.py holds no serialized descriptor")
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(serialized)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def parse_pbtxt(text: str, source: str = "<config.pbtxt>") -> Message:
    """Parse config.pbtxt text into an ``inference.ModelConfig`` message.

    A syntax error, a field Triton does not define, a bad enum name or an out of range
    number raises ``ConfigError`` with the line and column."""
    message = _model_config_class()()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        line, column = exc.GetLine(), exc.GetColumn()
        problem = str(exc)
        where = ""
        if line is not None:
            prefix = f"{line}:{column} : " if column is not None else f"{line} : "
            problem = problem.removeprefix(prefix)
            where = f" at line {line}" + (f", column {column}" if column is not None else "")
        raise ConfigError(f"{source}: invalid config.pbtxt{where}: {problem}") from None
    return message


def load_pbtxt(path: Path | str) -> ModelConfig:
    """Read a model's ``config.pbtxt`` and return it as a validated ``ModelConfig``.

    The model's name is the directory's (``path.parent.name``). Anything wrong raises
    ``ConfigError`` naming the file; fields steadyserve does not honour are named in a
    warning on the ``steadyserve.repository`` logger.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read model config {path}: {exc}") from None
    message = parse_pbtxt(text, source=str(path))
    mapped = _Mapping(path, message)
    try:
        config = model_config_from_mapping(mapped.data, source=str(path))
    except ConfigError as exc:
        raise ConfigError(mapped.explain(str(exc))) from None
    ignored = _ignored(message, "", mapped.used)
    if ignored:
        they = "they are" if len(ignored) > 1 else "it is"
        log.warning(
            "%s: steadyserve does not honour %s; %s ignored", path, ", ".join(ignored), they
        )
    for note in mapped.notes:
        log.warning("%s: %s", path, note)
    return config


class _Mapping:
    """config.pbtxt -> the mapping config.py validates, recording what it used.

    ``used`` holds the pbtxt paths (``instance_group[0].count``) the mapping honoured;
    ``origin`` our dotted key -> the pbtxt field it came from, to translate errors;
    ``notes`` what is honoured only in part."""

    def __init__(self, path: Path, cfg: Any):
        self.path = path
        self.data: dict[str, Any] = {}
        self.used: set[str] = set()
        self.origin: dict[str, str] = {}
        self.notes: list[str] = []
        self._identity(cfg)
        # Always explicit: Triton's default 0 means the model does not batch, where
        # steadyserve's default (no key) would batch a model with a dynamic first dim.
        self.put("max_batch_size", cfg.max_batch_size, "max_batch_size")
        self._tensors(cfg)
        self._versions(cfg)
        if cfg.default_model_filename:
            self.put("model_filename", cfg.default_model_filename, "default_model_filename")
        # No dynamic_batching: Triton runs each request as it comes, which is
        # batching.max_queue_delay_us 0, steadyserve's default: nothing to set.
        if cfg.HasField("dynamic_batching"):
            self._dynamic_batching(cfg.dynamic_batching)
        self._instance_groups(cfg)

    def use(self, *paths: str) -> None:
        self.used.update(paths)

    def put(self, key: str, value: Any, theirs: str, shown: str | None = None) -> None:
        """Set our dotted ``key`` to ``value``, taken from the pbtxt field ``theirs``
        (named ``shown`` in error messages, when that says it better)."""
        *parents, last = key.split(".")
        node = self.data
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
        self.used.add(theirs)
        if key != (shown or theirs):
            self.origin[key] = shown or theirs

    def explain(self, message: str) -> str:
        """A validation error in our keys, with the config.pbtxt fields they came from."""
        hits = [
            f"{ours} is {theirs}"
            for ours, theirs in self.origin.items()
            if re.search(rf"(?<![\w.]){re.escape(ours)}(?!\w)", message)
        ]
        return message + ("\n  in config.pbtxt: " + "; ".join(hits) if hits else "")

    def _identity(self, cfg: Any) -> None:
        directory = self.path.parent.name
        if cfg.name:
            self.use("name")
            if cfg.name != directory:
                raise ConfigError(
                    f"{self.path}: name {cfg.name!r} differs from the model directory "
                    f"{directory!r}; Triton requires them to be equal: rename one, or remove name"
                )
        for key, wanted in (("platform", PLATFORM), ("backend", BACKEND)):
            value = getattr(cfg, key)
            if not value:
                continue
            self.use(key)
            if value != wanted:
                raise ConfigError(f"{self.path}: {key} {value!r} is not served: {_SERVED}")

    def _tensors(self, cfg: Any) -> None:
        for ours, theirs in (("inputs", "input"), ("outputs", "output")):
            entries = []
            for i, tensor in enumerate(getattr(cfg, theirs)):
                at = f"{theirs}[{i}]"
                entry: dict[str, Any] = {"name": tensor.name}
                self.use(f"{at}.name")
                if tensor.data_type:
                    entry["datatype"] = self._datatype(tensor, f"{at}.data_type")
                    self.use(f"{at}.data_type")
                if tensor.dims:
                    entry["dims"] = list(tensor.dims)
                    self.use(f"{at}.dims")
                entries.append(entry)
            if entries:
                self.put(ours, entries, theirs)

    def _datatype(self, tensor: Any, at: str) -> str:
        """TYPE_FP32 -> "FP32", TYPE_STRING -> "BYTES" (the V2 names of datatypes.py)."""
        values = tensor.DESCRIPTOR.fields_by_name["data_type"].enum_type.values_by_number
        if tensor.data_type not in values:  # proto3 enums take any number in text format
            raise ConfigError(f"{self.path}: {at} {tensor.data_type} is not a Triton data type")
        name = values[tensor.data_type].name.removeprefix("TYPE_")
        return "BYTES" if name == "STRING" else name

    def _versions(self, cfg: Any) -> None:
        if not cfg.HasField("version_policy"):
            return
        policy = cfg.version_policy
        self.use("version_policy")  # an empty one is Triton's default: the latest one
        which = policy.WhichOneof("policy_choice")
        if which == "latest":
            self.put("versions", "latest", "version_policy.latest")
            if policy.latest.num_versions:
                self.put(
                    "latest_versions",
                    policy.latest.num_versions,
                    "version_policy.latest.num_versions",
                )
        elif which == "all":
            self.put("versions", "all", "version_policy.all")
        elif which == "specific":
            self.put("versions", list(policy.specific.versions), "version_policy.specific")
            self.use("version_policy.specific.versions")

    def _dynamic_batching(self, db: Any) -> None:
        at = "dynamic_batching"
        self.use(at)
        if db.preferred_batch_size:
            self.put(
                "batching.preferred_batch_sizes",
                list(db.preferred_batch_size),
                f"{at}.preferred_batch_size",
            )
        if db.max_queue_delay_microseconds:
            self.put(
                "batching.max_queue_delay_us",
                db.max_queue_delay_microseconds,
                f"{at}.max_queue_delay_microseconds",
            )
        if db.priority_levels:  # Triton's 0 is "no priorities", our 1 level
            self.put("slo.priority_levels", db.priority_levels, f"{at}.priority_levels")
        if db.default_priority_level:
            self.put(
                "slo.default_priority", db.default_priority_level, f"{at}.default_priority_level"
            )
        if db.HasField("default_queue_policy"):
            q = db.default_queue_policy
            qat = f"{at}.default_queue_policy"
            self.use(qat)
            if q.max_queue_size:
                self.put("batching.max_queue_size", q.max_queue_size, f"{qat}.max_queue_size")
            else:
                self.notes.append(
                    f"{qat}.max_queue_size is 0, Triton's unlimited queue: steadyserve bounds "
                    f"every queue and keeps its default of {BatchingConfig().max_queue_size} "
                    "requests; set max_queue_size to choose another"
                )
            # DELAY keeps late requests queued behind the others; steadyserve only
            # rejects, so with DELAY the timeout and the action are both left unused.
            if q.default_timeout_microseconds and q.timeout_action != _DELAY:
                self.put(
                    "slo.default_deadline_ms",
                    q.default_timeout_microseconds / 1000,
                    f"{qat}.default_timeout_microseconds",
                )
            self._override(q, qat)
        for level in sorted(db.priority_queue_policy):
            q = db.priority_queue_policy[level]
            qat = f"{at}.priority_queue_policy[{level}]"
            self.use(qat)
            entry = {}
            if q.max_queue_size:
                entry["max_queue_size"] = q.max_queue_size
                self.use(f"{qat}.max_queue_size")
            self.data.setdefault("slo", {}).setdefault("priority_queues", {})[level] = entry
            self.origin["slo.priority_queues"] = f"{at}.priority_queue_policy"
            self._override(q, qat)

    def _override(self, q: Any, at: str) -> None:
        # A request may always bring its own deadline in steadyserve.
        if q.allow_timeout_override:
            self.use(f"{at}.allow_timeout_override")

    def _instance_groups(self, cfg: Any) -> None:
        groups = list(cfg.instance_group)
        if not groups:
            return
        total = 0
        devices = []
        for i, group in enumerate(groups):
            at = f"instance_group[{i}]"
            self.use(at)
            if group.name:  # a label for Triton's instance names; nothing to do
                self.use(f"{at}.name")
            if group.count < 0:
                raise ConfigError(
                    f"{self.path}: {at}.count is {group.count}; it must be >= 1 (or left out: 1)"
                )
            if group.count:
                self.use(f"{at}.count")
            total += group.count or 1  # Triton reads 0 as 1
            if group.kind == _KIND_GPU:
                self.use(f"{at}.kind")
                if group.gpus:
                    self.use(f"{at}.gpus")
                devices.append(("cuda", group.gpus[0] if group.gpus else 0))
            else:
                if group.kind == _KIND_CPU:
                    self.use(f"{at}.kind")
                # KIND_AUTO and KIND_MODEL run on the CPU here; their gpus and a
                # KIND_MODEL stay unused, so the warning names them.
                devices.append(("cpu", 0))
        if total > MAX_INSTANCES:
            raise ConfigError(
                f"{self.path}: instance_group counts add up to {total} instances; steadyserve "
                f"runs 1..{MAX_INSTANCES} per model (instances): lower instance_group[].count"
            )
        self.put("instances", total, "instance_group", "the sum of instance_group[].count")
        device, device_id = devices[0]
        if device == "cuda":
            self.put("onnxruntime.device", "cuda", "instance_group[0].kind")
            self.put(
                "onnxruntime.device_id", device_id, "instance_group[0]", "instance_group[0].gpus[0]"
            )
        first = _device_name(devices[0])
        if len(groups[0].gpus) > 1 and device == "cuda":
            self.notes.append(
                f"instance_group[0].gpus lists {list(groups[0].gpus)}: steadyserve runs every "
                f"instance of a model on one device, so only the first is used ({first})"
            )
        for i, other in enumerate(devices[1:], start=1):
            if other != devices[0]:
                self.notes.append(
                    f"instance_group[{i}] asks for {_device_name(other)}: steadyserve runs every "
                    f"instance of a model on one device, so only the first group's is used "
                    f"({first}); its count still adds instances"
                )


def _device_name(device: tuple[str, int]) -> str:
    kind, index = device
    return f"GPU {index}" if kind == "cuda" else "the CPU"


def _touches(path: str, used: set[str]) -> bool:
    """Whether the mapping used ``path`` or anything under it."""
    return any(u == path or u.startswith((path + ".", path + "[")) for u in used)


def _ignored(message: Any, prefix: str, used: set[str]) -> list[str]:
    """Dotted paths of the fields set in ``message`` that the mapping did not use.

    A field nothing under which was used is named as a whole ("sequence_batching");
    one that was used in part is walked into ("input[0].reshape")."""
    out: list[str] = []
    for field, value in message.ListFields():
        path = prefix + field.name
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        if is_map:
            value_type = field.message_type.fields_by_name["value"].message_type
            for key in sorted(value):
                entry = f"{path}[{key}]"
                if not _touches(entry, used):
                    out.append(entry)
                elif value_type is not None:
                    out.extend(_ignored(value[key], entry + ".", used))
        elif not _touches(path, used):
            out.append(path)
        elif field.message_type is None:
            continue  # a scalar (or list of scalars) that was used
        elif _is_repeated(field):
            for i, item in enumerate(value):
                entry = f"{path}[{i}]"
                if not _touches(entry, used):
                    out.append(entry)
                else:
                    out.extend(_ignored(item, entry + ".", used))
        else:
            out.extend(_ignored(value, path + ".", used))
    return out


def _is_repeated(field: Any) -> bool:
    if hasattr(type(field), "is_repeated"):  # protobuf >= 6.31; label is deprecated there
        return bool(field.is_repeated)
    return bool(field.label == field.LABEL_REPEATED)


__all__ = ["CONFIG_FILE", "load_pbtxt", "parse_pbtxt"]
