"""Drives a genoserve server with KServe's own gRPC client, ``kserve.InferenceGRPCClient`` (the
Open Inference Protocol), as a KServe user's code would.

Run by tests/integration/test_open_inference.py with .venv-clients/bin/python (kserve pins its
own protobuf and FastAPI stack, so it runs apart). Imports nothing from genoserve.

    python kserve_client.py ADDRESS TOKEN WORKDIR

reads WORKDIR/x.npy (rows of platform-mlp's input), writes WORKDIR/kserve-raw.npy (sent as
raw_input_contents) and WORKDIR/kserve-contents.npy (sent as typed contents), and prints a JSON
report of everything else.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest

MODEL = "platform-mlp"


async def run(address: str, token: str, workdir: Path) -> dict[str, Any]:
    headers = (("authorization", f"Bearer {token}"),) if token else None
    x = np.load(workdir / "x.npy")
    async with InferenceGRPCClient(address, timeout=30) as client:
        report: dict[str, Any] = {
            "live": await client.is_server_live(headers=headers),
            "ready": await client.is_server_ready(headers=headers),
            "model_ready": await client.is_model_ready(MODEL, headers=headers),
        }
        raw = InferInput("x", list(x.shape), "FP32")
        raw.set_data_from_numpy(x, binary_data=True)
        listed = InferInput("x", list(x.shape), "FP32", data=x.ravel().tolist())
        for kind, tensor in (("raw", raw), ("contents", listed)):
            result = await client.infer(InferRequest(MODEL, [tensor], request_id=kind), headers=headers)
            [output] = result.outputs
            np.save(workdir / f"kserve-{kind}.npy", output.as_numpy())
            report[kind] = {"id": result.id, "model": result.model_name, "output": output.name}
        bad = InferInput("x", [2, 7], "FP32")
        bad.set_data_from_numpy(np.ones((2, 7), np.float32))
        try:
            await client.infer(InferRequest(MODEL, [bad]), headers=headers)
        except grpc.RpcError as exc:
            report["bad"] = [exc.code().name, exc.details()]
    return report


def main() -> None:
    address, token, workdir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    print(json.dumps(asyncio.run(run(address, token, workdir))))


if __name__ == "__main__":
    main()
