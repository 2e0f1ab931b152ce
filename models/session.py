"""onnxruntime sessions, built one way for every model.

Model code depends on the small `ModelSession` protocol, not on onnxruntime, so a detector or
embedder can be exercised with any object that runs a graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray


class ModelSession(Protocol):
    def run(
        self, output_names: list[str] | None, input_feed: dict[str, NDArray[np.float32]]
    ) -> list[Any]: ...

    def get_inputs(self) -> list[Any]: ...

    def get_outputs(self) -> list[Any]: ...


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    # Explicit thread counts: the service runs detector and embedder sessions from a small
    # thread pool, and onnxruntime's default (one thread per core per session) makes them
    # fight over the same cores. inter-op parallelism buys nothing for these sequential graphs.
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Within one run, a session's pool threads spin between operators: waking a sleeping
    # thread for each of a small graph's ~100 operators costs more than the work it is given
    # (two threads sped a capture up 1.2× without spinning, 1.5× with it). When the run ends
    # they stop, so one session's idle pool never burns the core another session is using.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.log_severity_level = 3
    return options


def create_session(model: Path | bytes, intra_op_threads: int = 1) -> ort.InferenceSession:
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(
        source, session_options(intra_op_threads), providers=["CPUExecutionProvider"]
    )
