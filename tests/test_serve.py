"""The HTTP service: the contract through FastAPI's TestClient (classify, detect, models,
health, the page), every error status it promises, the bearer token, the streamed upload
limit, and one request to a real uvicorn process on a free loopback port."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from conftest import crop_classifier, tiny_classifier
from napari_mitosis.serve.app import create_app, load_served


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, trained_detector) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("served")
    return {
        "idc": tiny_classifier(folder / "idc.safetensors", threshold=0.4),
        "three": tiny_classifier(folder / "three.safetensors", classes=("a", "b", "c")),
        "detector": trained_detector[0],
        "atypical": crop_classifier(folder / "atypical.safetensors"),
    }


@pytest.fixture(scope="module")
def client(checkpoints) -> TestClient:
    served = load_served([str(p) for p in checkpoints.values()], device="cpu")
    return TestClient(create_app(served, max_upload_mb=1))


def test_classify_gives_every_class_probability_for_each_image(client, checkpoints) -> None:
    from napari_mitosis.classification.run import ClassifierPredictor, classify_images
    from napari_mitosis.models.checkpoint import load_checkpoint

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (50, 50, 3), np.uint8) for _ in range(3)]
    files = [("image", (f"p{i}.png", png(a), "image/png")) for i, a in enumerate(images)]
    response = client.post("/v1/classify", files=files, data={"model": "idc"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    model, card = load_checkpoint(checkpoints["idc"])
    expected = classify_images(images, ClassifierPredictor(model, card, "cpu"))
    for result, p in zip(results, expected, strict=True):
        assert result["classes"] == ["benign", "idc"] and result["threshold"] == 0.4
        assert result["probabilities"] == pytest.approx([1 - p, p], abs=1e-6)
        assert result["label"] == ("idc" if p >= 0.4 else "benign")
    many = client.post("/v1/classify", files=files[:1], data={"model": "three"}).json()
    (only,) = many["results"]
    assert len(only["probabilities"]) == 3 and sum(only["probabilities"]) == pytest.approx(1)
    assert only["label"] == "abc"[int(np.argmax(only["probabilities"]))]


def test_detect_health_models_page_and_schema(client, checkpoints, field_pairs) -> None:
    field = field_pairs[0][0]
    response = client.post(
        "/v1/detect", files={"image": ("hpf.png", png(field), "image/png")}, data={"mpp": "0.25"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == len(body["boxes_px"]) == len(body["scores"])
    assert set(body["classes"]) == {"Mitosis candidate"} and body["model"]
    assert np.allclose(np.asarray(body["boxes_um"]), np.asarray(body["boxes_px"]) * 0.25, atol=1e-2)
    # Each candidate's crop through a served classifier, as `subtype` scores it.
    subtyped = client.post(
        "/v1/detect",
        files={"image": ("hpf.png", png(field), "image/png")},
        data={"mpp": "0.25", "subtype": "atypical", "verify": "atypical"},
    ).json()
    assert subtyped["count"] == body["count"] > 0
    from napari_mitosis.classification.predictor import ClassifierPredictor
    from napari_mitosis.detection.candidates import score_candidates
    from napari_mitosis.models.checkpoint import load_checkpoint

    predictor = ClassifierPredictor(*load_checkpoint(checkpoints["atypical"]), "cpu")
    boxes = np.asarray(subtyped["boxes_px"])
    centres = np.stack([(boxes[:, 1] + boxes[:, 3]) / 2, (boxes[:, 0] + boxes[:, 2]) / 2], 1)
    expected = score_candidates(field, centres, predictor, mpp=0.25)
    assert subtyped["p_atypical"] == pytest.approx(expected.tolist(), abs=1e-3)
    assert subtyped["p_mitosis"] == subtyped["p_atypical"]
    assert subtyped["classifiers"]["p_atypical"] == {"model": "atypical", "threshold": 0.5}
    health = client.get("/v1/health").json()
    assert health["status"] == "ok" and set(health["models"]) == {
        "idc",
        "three",
        "detector",
        "atypical",
    }
    assert client.get("/v1/models").json()["idc"]["classes"] == ["benign", "idc"]
    assert 'id="classify"' in client.get("/").text
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/classify", "/v1/detect", "/v1/models", "/v1/health"} <= set(paths)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"just some text", "not a readable PNG, JPEG or TIFF image"),
        (png(np.zeros((50, 50, 3), np.uint8))[:60], "not a readable PNG, JPEG or TIFF image"),
    ],
    ids=["text", "truncated PNG"],
)
def test_bad_images_are_400_naming_the_file(client, content: bytes, message: str) -> None:
    response = client.post("/v1/classify", files={"image": ("bad.png", content, "image/png")})
    assert response.status_code == 400
    assert response.json()["error"].startswith("bad.png: " + message)
    assert "Traceback" not in response.text


def test_errors_are_json_with_their_status(client) -> None:
    image = {"image": ("p.png", png(np.zeros((50, 50, 3), np.uint8)), "image/png")}
    unknown = client.post("/v1/classify", files=image, data={"model": "nope"})
    assert (
        unknown.status_code == 404
        and "nope: no such classification model" in unknown.json()["error"]
    )
    assert client.post("/v1/classify", data={"model": "idc"}).status_code == 400  # no image
    assert "image" in client.post("/v1/classify").json()["error"]
    wrong_task = client.post("/v1/detect", files=image, data={"model": "idc"})
    assert wrong_task.status_code == 404
    big = {"image": ("big.png", b"\0" * (2 * 2**20), "image/png")}
    too_large = client.post("/v1/classify", files=big)
    assert too_large.status_code == 413 and "limit of 1 MB" in too_large.json()["error"]

    def chunks():  # no Content-Length: the limit acts while the body streams in
        yield b'--x\r\nContent-Disposition: form-data; name="image"; filename="b.png"\r\n\r\n'
        for _ in range(40):
            yield b"\0" * 65536
        yield b"\r\n--x--\r\n"

    streamed = client.post(
        "/v1/classify",
        content=chunks(),
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert streamed.status_code == 413


def test_a_token_is_needed_when_one_is_set(checkpoints) -> None:
    served = load_served([str(checkpoints["idc"])], device="cpu")
    client = TestClient(create_app(served, token="s3cret"))
    image = {"image": ("p.png", png(np.zeros((50, 50, 3), np.uint8)), "image/png")}
    assert client.get("/v1/health").status_code == 200  # for load balancers
    refused = client.post("/v1/classify", files=image)
    assert refused.status_code == 401 and "bearer token" in refused.json()["error"]
    wrong = client.get("/v1/models", headers={"Authorization": "Bearer guess"})
    assert wrong.status_code == 401
    ok = client.post("/v1/classify", files=image, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_runs_uvicorn_on_loopback_and_answers(checkpoints, tmp_path: Path) -> None:
    port = free_port()
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    command = [
        sys.executable,
        "-m",
        "napari_mitosis",
        "serve",
        "--models",
        str(checkpoints["idc"]),
        "--port",
        str(port),
        "--token-file",
        str(token),
    ]  # fmt: skip  (the default --device auto, as a user runs it)
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=1) as r:
                    health = json.loads(r.read())
                break
            except OSError:
                if server.poll() is not None:
                    pytest.fail(server.stdout.read())
                time.sleep(0.1)
        else:
            pytest.fail("the server did not answer")
        assert health["models"] == ["idc"]
        boundary = "b0undary"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="p.png"\r\n'
                "Content-Type: image/png\r\n\r\n"
            ).encode()
            + png(np.zeros((50, 50, 3), np.uint8))
            + f"\r\n--{boundary}--\r\n".encode()
        )
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/classify",
            data=body,
            headers={
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                "Authorization": "Bearer t0ken",
            },
        )
        with urllib.request.urlopen(request, timeout=30) as r:
            (result,) = json.loads(r.read())["results"]
        assert result["classes"] == ["benign", "idc"] and sum(
            result["probabilities"]
        ) == pytest.approx(1)
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert f"on http://127.0.0.1:{port} (this machine only; a bearer token is required" in output


def test_concurrent_requests_share_forward_passes(checkpoints) -> None:
    """Sixteen requests at once: fewer forward passes than requests, and each request gets
    exactly its own images' answers back."""
    import asyncio

    import httpx

    from napari_mitosis.classification.run import classify_images

    served = load_served([str(checkpoints["idc"])], device="cpu", window_s=0.05)
    app = create_app(served)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (50, 50, 3), np.uint8) for _ in range(16)]
    expected = classify_images(images, served["idc"].predictor)

    async def send_all() -> list[dict]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as session:
            answers = await asyncio.gather(
                *(
                    session.post("/v1/classify", files={"image": (f"{i}.png", png(a), "image/png")})
                    for i, a in enumerate(images)
                )
            )
        return [a.json()["results"][0] for a in answers]

    results = asyncio.run(send_all())
    batches = served["idc"].batcher.batches
    assert sum(batches) == 16 and len(batches) < 16 and max(batches) > 1
    for i, result in enumerate(results):
        assert result["image"] == f"{i}.png"
        assert result["probabilities"][1] == pytest.approx(float(expected[i]), abs=1e-6)


def test_the_batcher_routes_rows_and_errors_to_their_requests() -> None:
    import asyncio

    from napari_mitosis.serve.batching import Batcher

    calls: list[int] = []

    def run(images: list[np.ndarray]) -> np.ndarray:
        calls.append(len(images))
        if any(float(image.sum()) < 0 for image in images):
            raise ValueError("a negative image")
        return np.asarray([float(image.sum()) for image in images])

    batcher = Batcher(run, window_s=0.05, max_images=8)

    async def go() -> list[np.ndarray]:
        requests = [[np.full(2, i), np.full(2, 10 * i)] for i in range(6)]  # 12 images
        return await asyncio.gather(*(batcher(r) for r in requests))

    answers = asyncio.run(go())
    assert [a.tolist() for a in answers] == [[2 * i, 20 * i] for i in range(6)]
    assert calls == [8, 4]  # the cap splits 12 images into 8 + 4

    async def failing() -> None:
        await asyncio.gather(batcher([np.full(2, -1)]), batcher([np.full(2, 1)]))

    with pytest.raises(ValueError, match="a negative image"):
        asyncio.run(failing())
