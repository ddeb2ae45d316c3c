"""The MONAI Label app, served for real: `monailabel start_server` from .venv-label on 127.0.0.1.

The studies folder holds the atlas T1 moved by a known rigid transform onto another grid (RAS, 1.25 mm) and the
real demo T1 (OASIS); the answer for the first is the atlas labels moved by the same transform. Run by
`make test-label` (needs `make label-env` and a 3D bundle with trained weights).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from atlas_case import dice, moved_atlas  # noqa: E402

LABEL_VENV = Path(os.environ.get("LABEL_VENV", ROOT / ".venv-label"))
if not LABEL_VENV.is_absolute():
    LABEL_VENV = ROOT / LABEL_VENV
MONAILABEL = LABEL_VENV / "bin" / "monailabel"

pytestmark = [
    pytest.mark.label,
    pytest.mark.skipif(not MONAILABEL.is_file(), reason=f"{MONAILABEL} absent: run `make label-env`"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 30) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _post(url: str, fields: dict[str, str] | None = None, file: tuple[str, bytes] | None = None,
          timeout: float = 900) -> tuple[int, bytes, dict]:  # fmt: skip
    boundary = uuid.uuid4().hex
    body = b""
    for k, v in (fields or {}).items():
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
    if file is not None:
        body += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file[0]}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n").encode() + file[1] + b"\r\n"  # fmt: skip
    body += f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def _label_from_response(body: bytes, headers: dict, dest: Path) -> Path:
    """/infer returns multipart (params + file) or the file alone, depending on `output`; handle both."""
    ctype = headers.get("content-type", headers.get("Content-Type", ""))
    if "multipart" in ctype:
        boundary = ctype.split("boundary=")[1].strip().encode()
        for part in body.split(b"--" + boundary):
            head, _, data = part.partition(b"\r\n\r\n")
            if b"filename" in head:
                dest.write_bytes(data.rsplit(b"\r\n", 1)[0])
                return dest
        raise AssertionError("no file part in the multipart response")
    dest.write_bytes(body)
    return dest


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    studies = tmp_path_factory.mktemp("studies")
    moved, truth, none = moved_atlas(studies)
    (studies / "oasis_demo.nii.gz").write_bytes((ROOT / "data" / "demo" / "fixed_t1.nii.gz").read_bytes())
    app = tmp_path_factory.mktemp("app")
    # a copy of the app folder so the run's outputs stay in tmp
    import shutil

    shutil.copytree(ROOT / "scripts" / "monailabel_app", app / "monailabel_app",
                    ignore=shutil.ignore_patterns("outputs", "__pycache__", "model"))  # fmt: skip
    port = _free_port()
    log = open(app / "server.log", "w")
    # the monailabel launcher runs `python -m monailabel.main`: the label env's python must come first on PATH
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VIRTUAL_ENV": str(LABEL_VENV),
           "PATH": f"{LABEL_VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    cmd = [str(MONAILABEL), "start_server", "--app", str(app / "monailabel_app"), "--studies", str(studies),
           "--conf", "models", "hybrid_loss", "--conf", "bundles_dir", str(ROOT / "bundles"),
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=app)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited ({proc.returncode}): {(app / 'server.log').read_text()[-4000:]}")
        try:
            status, _ = _get(base + "/info/", timeout=5)
            if status == 200:
                break
        except OSError:
            pass
        time.sleep(2)
    else:
        proc.kill()
        raise AssertionError(f"server did not answer /info/: {(app / 'server.log').read_text()[-4000:]}")
    yield {"base": base, "truth": truth, "none": none, "moved": moved, "app": app / "monailabel_app", "proc": proc}
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_info_lists_the_bundle_as_a_segmentation_model(server):
    status, body = _get(server["base"] + "/info/")
    assert status == 200
    info = json.loads(body)
    assert "hybrid_loss" in info["models"], info["models"]
    model = info["models"]["hybrid_loss"]
    assert model["type"] == "segmentation" and model["dimension"] == 3
    assert model["labels"]["left hippocampus"] == 17
    status, body = _get(server["base"] + "/datastore/?output=all")
    assert status == 200 and "moved_atlas" in body.decode()


def test_infer_returns_atlas_labels_on_the_image_grid_close_to_the_known_answer(server, tmp_path):
    status, body, headers = _post(server["base"] + "/infer/hybrid_loss?image=moved_atlas&output=all",
                                  fields={"params": "{}"})  # fmt: skip
    assert status == 200, body[:2000]
    path = _label_from_response(body, headers, tmp_path / "labels.nii.gz")
    out, ref = nib.load(path), nib.load(server["moved"])
    assert out.shape == ref.shape
    assert np.allclose(out.affine, ref.affine, atol=1e-3)
    labels = np.asarray(out.dataobj).astype(np.int16)
    score, chance = dice(labels, server["truth"]), dice(server["none"], server["truth"])
    print(f"atlas segmentation Dice {score:.3f} (no registration {chance:.3f})")
    assert score > 0.75 and score > chance + 0.2, (score, chance)
    # the displacement and the affine were written next to the labels, named by the response
    outputs = server["app"] / "outputs" / "hybrid_loss" / "moved_atlas"
    for name in ("labels.nii.gz", "displacement_itk.nii.gz", "affine.tfm", "atlas.json"):
        assert (outputs / name).is_file(), name


def test_infer_on_the_real_demo_t1(server, tmp_path):
    status, body, headers = _post(server["base"] + "/infer/hybrid_loss?image=oasis_demo&output=image",
                                  fields={"params": "{}"})  # fmt: skip
    assert status == 200, body[:2000]
    labels = nib.load(_label_from_response(body, headers, tmp_path / "l.nii.gz"))
    ref = nib.load(ROOT / "data" / "demo" / "fixed_t1.nii.gz")
    assert labels.shape == ref.shape and np.allclose(labels.affine, ref.affine, atol=1e-3)
    assert len(np.unique(np.asarray(labels.dataobj))) >= 30  # background + nearly all 32 structures


def test_bad_requests_get_http_errors_and_the_server_keeps_serving(server):
    base = server["base"]
    status, _, _ = _post(base + "/infer/no_such_model?image=moved_atlas", fields={"params": "{}"})
    assert status >= 400
    status, _, _ = _post(base + "/infer/hybrid_loss?image=no_such_image", fields={"params": "{}"})
    assert status >= 400
    status, body, _ = _post(base + "/infer/hybrid_loss?image=upload", fields={"params": "{}"},
                            file=("corrupt.nii.gz", b"\x1f\x8b\x08\x00 definitely not a volume"))  # fmt: skip
    assert status >= 400, body[:500]
    status, body, _ = _post(base + "/infer/hybrid_loss?image=moved_atlas",
                            fields={"params": json.dumps({"instance_iterations": "many"})})  # fmt: skip
    assert status >= 400
    assert server["proc"].poll() is None
    status, _ = _get(base + "/info/")
    assert status == 200
