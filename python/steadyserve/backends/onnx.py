"""ONNX Runtime sessions: providers, threads, tensor specs, run and warm-up.

``onnxruntime`` is imported inside ``load`` so that the package (config checks,
the CLI's help, the gRPC codec) works where it is not installed; only loading a
model needs it, and then the error says which package to install.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..config import OnnxRuntimeConfig
from ..datatypes import ONNX_TO_V2, TensorSpec
from ..errors import (
    BackendUnavailableError,
    ConfigError,
    InternalError,
    SteadyServeError,
    UnavailableError,
)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

log = logging.getLogger("steadyserve.backend")

# intra_op_threads: auto. A one-row batch faster than this on one thread gains nothing
# from more (thread hand-offs cost tens of microseconds), so no second session is tried.
AUTO_THREADS_MIN_S = 0.0003
# ... and more threads are kept only when they make the one-row batch this much faster,
# comparing the best of this many alternating runs of each session.
AUTO_THREADS_GAIN = 0.8
AUTO_THREADS_ROUNDS = 15

_INSTALL_HINT = (
    "pip install 'steadyserve[cpu]' (CPU) or pip install 'steadyserve[gpu]' (NVIDIA CUDA; "
    "installs onnxruntime-gpu, which replaces onnxruntime)"
)


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(
            f"ONNX Runtime is not installed ({exc}); install it with {_INSTALL_HINT}"
        ) from None
    return onnxruntime


def auto_thread_count() -> int:
    """The intra-op threads tried by intra_op_threads: auto: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _session_options(ort: Any, options: OnnxRuntimeConfig, intra_op_threads: int) -> Any:
    so = ort.SessionOptions()
    so.intra_op_num_threads = intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    # Sequential: the batcher gives ORT whole batches; parallelism across requests comes
    # from instances (executor threads), not from ORT's inter-op scheduler.
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[options.graph_optimization]
    # ORT's pools spin-wait by default, burning a core each while idle; we turn that off
    # unless the config asks for it (it only pays off on dedicated, many-core machines).
    spin = "1" if options.allow_spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return so


def _open_session(ort: Any, path: Path, options: OnnxRuntimeConfig, intra_op_threads: int) -> Any:
    try:
        return ort.InferenceSession(
            str(path),
            sess_options=_session_options(ort, options, intra_op_threads),
            providers=_providers(ort, path, options),
        )
    except SteadyServeError:
        raise
    except Exception as exc:  # ORT raises its own pybind exception types
        raise ConfigError(f"cannot load ONNX model {path}: {exc}") from None


def _providers(ort: Any, path: Path, options: OnnxRuntimeConfig) -> list[Any]:
    if options.device == "cpu":
        return [CPU]
    available = ort.get_available_providers()
    if CUDA not in available:
        raise UnavailableError(
            f"model {path} asks for onnxruntime.device: cuda, but this onnxruntime "
            f"{ort.__version__} offers only {', '.join(available)}. Install the GPU build "
            f"(pip uninstall onnxruntime && pip install 'steadyserve[gpu]') on a machine with "
            f"CUDA, or set onnxruntime.device: cpu in the model's config.yaml"
        )
    return [(CUDA, {"device_id": options.device_id}), CPU]


def _specs(path: Path, args: list[Any], kind: str) -> list[TensorSpec]:
    specs = []
    for arg in args:
        datatype = ONNX_TO_V2.get(arg.type)
        if datatype is None:
            hint = ""
            if arg.type.startswith(("seq(", "map(")):
                hint = (
                    " (scikit-learn classifiers exported with skl2onnx produce these; "
                    "convert with options={'zipmap': False} to get a probability tensor)"
                )
            raise ConfigError(
                f"model {path}: {kind} '{arg.name}' has type {arg.type}, which steadyserve "
                f"cannot serve; supported are tensors of {', '.join(ONNX_TO_V2.values())}{hint}"
            )
        # ORT gives ints for fixed dims, names (str) for symbolic ones and None for unknown.
        shape = [d if isinstance(d, int) else -1 for d in (arg.shape or [])]
        specs.append(TensorSpec(arg.name, datatype, shape))
    return specs


class OnnxBackend:
    """One ONNX Runtime session. ``run`` may be called from several threads at once."""

    def __init__(
        self,
        path: Path,
        session: Any,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        options: OnnxRuntimeConfig | None = None,
        intra_op_threads: int = 1,
    ):
        self.path = path
        self._session = session
        self.inputs = inputs
        self.outputs = outputs
        self.providers: list[str] = list(session.get_providers())
        self._options = options or OnnxRuntimeConfig()
        # The threads the session runs with (intra_op_threads: auto settles it in warmup).
        self.intra_op_threads = intra_op_threads

    @classmethod
    def load(cls, path: Path | str, options: OnnxRuntimeConfig | None = None) -> OnnxBackend:
        """Open ``path`` with the session settings of ``options`` (defaults if None).

        Raises BackendUnavailableError (no onnxruntime), UnavailableError (CUDA asked
        for but not usable) or ConfigError (missing / invalid model file, unsupported types).
        """
        path = Path(path)
        options = options or OnnxRuntimeConfig()
        ort = _import_ort()
        if not path.is_file():
            raise ConfigError(f"model file {path} does not exist")
        threads = 1 if options.intra_op_threads == "auto" else options.intra_op_threads
        session = _open_session(ort, path, options, threads)
        # ORT falls back to CPU (with only a log line) when the CUDA libraries fail to load;
        # a model configured for the GPU must not quietly run on the CPU instead.
        if options.device == "cuda" and CUDA not in session.get_providers():
            raise UnavailableError(
                f"model {path}: the CUDA provider could not be started (session providers: "
                f"{', '.join(session.get_providers())}); check the CUDA and cuDNN libraries "
                f"that onnxruntime-gpu {ort.__version__} needs, or set onnxruntime.device: cpu"
            )
        inputs = _specs(path, session.get_inputs(), "input")
        outputs = _specs(path, session.get_outputs(), "output")
        return cls(path, session, inputs, outputs, options, threads)

    @property
    def session(self) -> Any:
        """The ``onnxruntime.InferenceSession`` (IOBinding, profiling); None once closed."""
        return self._session

    def run(
        self,
        inputs: dict[str, np.ndarray],
        output_names: list[str] | None = None,
        run_options: Any = None,
    ) -> dict[str, np.ndarray]:
        """Run the session on already checked inputs; the GIL is released while ORT computes.

        ``run_options`` (from ``new_run_options``) lets another thread stop this run by
        setting its ``terminate`` flag (the execution timeout does).
        """
        session = self._session  # a local reference keeps a concurrent close() harmless
        if session is None:
            raise UnavailableError(f"model {self.path} is closed")
        names = list(output_names) if output_names is not None else [o.name for o in self.outputs]
        try:
            values = session.run(names, inputs, run_options)
        except Exception as exc:
            raise InternalError(f"ONNX Runtime failed running {self.path}: {exc}") from None
        return dict(zip(names, values, strict=True))

    def new_run_options(self) -> Any:
        """A fresh ``onnxruntime.RunOptions`` for one ``run``."""
        return _import_ort().RunOptions()

    def zero_inputs(self, batch_size: int | None) -> dict[str, np.ndarray]:
        """Zero-filled inputs (BYTES: empty strings): the first dim set to ``batch_size``
        (unless None), other dynamic dims to 1. Suits ``warmup`` for models without
        data-dependent shapes."""
        feeds = {}
        for spec in self.inputs:
            shape = [1 if d < 0 else d for d in spec.shape]
            if batch_size is not None and shape:
                shape[0] = batch_size
            if spec.datatype == "BYTES":  # empty strings, not the object array's int 0
                feeds[spec.name] = np.full(shape, "", dtype=object)
            else:
                feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
        return feeds

    def warmup(
        self,
        inputs_for_batch: Callable[[int], dict[str, np.ndarray]],
        batch_sizes: list[int],
        repeats: int = 3,
    ) -> dict[int, float]:
        """Run each batch size ``repeats`` times after one untimed run; median seconds per size.

        The untimed run pays for ORT's first-run allocations, so the medians are what a
        batch of that size costs in steady state (what the latency model wants to know).
        """
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        timings = self._time_sizes(inputs_for_batch, batch_sizes, repeats)
        if self._options.intra_op_threads == "auto" and self._options.device == "cpu":
            timings = self._choose_threads(inputs_for_batch, batch_sizes, repeats, timings)
        return timings

    def _time_sizes(self, inputs_for_batch, batch_sizes, repeats) -> dict[int, float]:
        timings: dict[int, float] = {}
        for size in batch_sizes:
            feeds = inputs_for_batch(size)
            self.run(feeds)
            samples = []
            for _ in range(repeats):
                start = time.perf_counter()
                self.run(feeds)
                samples.append(time.perf_counter() - start)
            timings[size] = statistics.median(samples)
        return timings

    def _choose_threads(self, inputs_for_batch, batch_sizes, repeats, one_thread):
        """intra_op_threads: auto. One thread unless the model is slow enough for more to
        pay: then a session with one thread per core is compared on a one-row batch and
        kept if it is clearly faster (latency at low load is what threads buy; at high
        load the batcher's larger batches keep one thread busy anyway). The two sessions
        run alternately and each keeps its fastest time, so a burst of load on a shared
        machine slows both alike instead of deciding the choice."""
        smallest = min(one_thread)
        cores = auto_thread_count()
        if cores < 2 or one_thread[smallest] < AUTO_THREADS_MIN_S:
            return one_thread
        ort = _import_ort()
        single = self._session
        many = _open_session(ort, self.path, self._options, cores)
        feeds = inputs_for_batch(smallest)
        names = [o.name for o in self.outputs]
        best = {id(single): float("inf"), id(many): float("inf")}
        many.run(names, feeds)  # its first-run allocations, untimed
        for _ in range(AUTO_THREADS_ROUNDS):
            for session in (single, many):
                start = time.perf_counter()
                session.run(names, feeds)
                best[id(session)] = min(best[id(session)], time.perf_counter() - start)
        one_s, many_s = best[id(single)], best[id(many)]
        if many_s < AUTO_THREADS_GAIN * one_s:
            self._session = many
            self.intra_op_threads = cores
            chosen = self._time_sizes(inputs_for_batch, batch_sizes, repeats)
        else:
            chosen = one_thread
        log.info(
            "intra_op_threads auto: %d (batch of %d: %.3f ms with 1 thread, %.3f ms with %d)",
            self.intra_op_threads,
            smallest,
            one_s * 1e3,
            many_s * 1e3,
            cores,
            extra={"model": str(self.path), "intra_op_threads": self.intra_op_threads},
        )
        return chosen

    def close(self) -> None:
        """Drop the session (ORT frees it once in-flight runs return). Idempotent."""
        self._session = None

    def __repr__(self) -> str:
        return f"OnnxBackend({str(self.path)!r}, providers={self.providers})"
