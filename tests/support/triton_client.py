"""Drives a genoserve server with the real tritonclient package (the Open Inference Protocol).

Run by tests/integration/test_open_inference.py with .venv-clients/bin/python (tritonclient's
protobuf pin differs from genoserve's, so it runs apart). Imports nothing from genoserve.

    python triton_client.py ADDRESS TOKEN WORKDIR

reads WORKDIR/x.npy (rows of platform-mlp's input), writes WORKDIR/infer.npy and
WORKDIR/stream.npy (the outputs) and prints a JSON report of everything else.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

MODEL = "platform-mlp"


def rows_input(x: np.ndarray) -> tc.InferInput:  # type: ignore[type-arg]
    tensor = tc.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def main() -> None:
    address, token, workdir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    headers = {"authorization": f"Bearer {token}"} if token else None
    client = tc.InferenceServerClient(address)
    report: dict[str, Any] = {
        "live": client.is_server_live(headers=headers),
        "ready": client.is_server_ready(headers=headers),
        "model_ready": client.is_model_ready(MODEL, headers=headers),
        "unknown_ready": client.is_model_ready("no-such-model", headers=headers),
        "server": client.get_server_metadata(headers=headers, as_json=True),
        "metadata": client.get_model_metadata(MODEL, headers=headers, as_json=True),
    }
    x = np.load(workdir / "x.npy")
    result = client.infer(MODEL, [rows_input(x)], outputs=[tc.InferRequestedOutput("y")], request_id="one",
                          headers=headers)  # fmt: skip
    np.save(workdir / "infer.npy", result.as_numpy("y"))
    report["infer"] = {"id": result.get_response().id, "version": result.get_response().model_version}
    try:
        client.infer(MODEL, [rows_input(np.ones((2, 7), np.float32))], headers=headers)
    except InferenceServerException as exc:
        report["bad"] = [str(exc.status()), exc.message()]

    answers: dict[str, Any] = {}
    done = threading.Event()

    def callback(result: Any, error: Any) -> None:
        if error is not None:
            answers[f"error-{len(answers)}"] = str(error)
        else:
            answers[result.get_response().id] = result.as_numpy("y")
        if len(answers) == len(x) + 1:
            done.set()

    client.start_stream(callback=callback, headers=headers)
    for i in range(len(x)):
        client.async_stream_infer(MODEL, [rows_input(x[i : i + 1])], request_id=f"row-{i}")
    client.async_stream_infer(MODEL, [rows_input(np.ones((1, 7), np.float32))], request_id="bad")
    done.wait(60)
    client.stop_stream()
    rows = [answers.pop(f"row-{i}") for i in range(len(x)) if f"row-{i}" in answers]
    np.save(workdir / "stream.npy", np.concatenate(rows) if rows else np.zeros((0, 16), np.float32))
    report["stream_rows"] = len(rows)
    report["stream_other"] = {k: v if isinstance(v, str) else v.tolist() for k, v in answers.items()}
    client.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
