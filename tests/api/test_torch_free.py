"""The API process never imports torch: a fresh interpreter starts the app and serves real requests, then looks."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.servers import REPO

SCRIPT = textwrap.dedent(
    """
    import io, sys, tempfile
    from pathlib import Path
    from PIL import Image
    from tests.servers import ApiThread, settings_for

    with ApiThread(settings_for(Path(tempfile.mkdtemp()))) as server, server.client() as http:
        job = http.post("/v1/jobs", json={"classes": ["cat", "dog"]})
        assert job.status_code == 201, job.text
        image = io.BytesIO(); Image.new("RGB", (8, 8)).save(image, format="PNG")
        upload = http.post("/v1/jobs", files=[("spec", (None, '{"classes": ["a", "b"]}')), ("images[a]", ("a.png", image.getvalue()))])
        assert upload.status_code == 201, upload.text
        for path in ("/v1/jobs", f"/v1/jobs/{job.json()['id']}", f"/v1/jobs/{job.json()['id']}/events", "/v1/teachers",
                     "/v1/students", "/readyz", "/metrics"):
            assert http.get(path).status_code == 200, path
        assert http.post(f"/v1/jobs/{job.json()['id']}/cancel").status_code == 200
        assert http.post("/v1/jobs", json={"classes": ["a"]}).status_code == 422
    heavy = sorted(m for m in ("torch", "torchvision", "open_clip", "onnxruntime", "worker") if m in sys.modules)
    print("HEAVY", heavy)
    """
)


def test_api_process_never_imports_torch():
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
