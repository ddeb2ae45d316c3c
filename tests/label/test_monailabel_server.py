"""The MONAI Label app, served for real: the README's command from .venv-label, on 127.0.0.1.

The studies folder holds the atlas T1 moved by a known rigid transform onto another grid (RAS, 1.25 mm), the
atlas T1 itself and the real demo T1 (OASIS); the answer for the first is the atlas labels moved by the same
transform. Calls go through ``monailabel.client.MONAILabelClient`` (``client_call.py``, run by the label
environment's python) where the client has the call, else plain HTTP. Run by `make test-label` (needs
`make label-env` and a 3D bundle with trained weights).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import map_coordinates

ROOT = Path(__file__).resolve().parents[2]
from common.data.brain.labels import BRAIN_EVAL_LABELS  # noqa: E402
from common.engines.label_app import slicer_segments, to_slicer_values  # noqa: E402
from tests.atlas_case import dice, moved_atlas  # noqa: E402

LABEL_VENV = Path(os.environ.get("LABEL_VENV", ROOT / ".venv-label"))
if not LABEL_VENV.is_absolute():
    LABEL_VENV = ROOT / LABEL_VENV
LABEL_PY = LABEL_VENV / "bin" / "python"

pytestmark = [
    pytest.mark.label,
    pytest.mark.skipif(
        not (LABEL_VENV / "bin" / "monailabel").is_file(), reason=f"{LABEL_VENV} absent: make label-env"
    ),
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
          timeout: float = 900, method: str = "POST") -> tuple[int, bytes]:  # fmt: skip
    boundary = uuid.uuid4().hex
    body = b""
    for k, v in (fields or {}).items():
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
    if file is not None:
        body += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file[0]}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n").encode() + file[1] + b"\r\n"  # fmt: skip
    body += f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _client(server: dict, op: str, **kwargs) -> dict:
    """One MONAILabelClient call in the label environment; returns its JSON answer."""
    out = subprocess.run([str(LABEL_PY), str(ROOT / "tests" / "label" / "client_call.py"), server["base"], op,
                          json.dumps(kwargs)], capture_output=True, text=True, timeout=900)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def readme_command() -> list[str]:
    """The server command exactly as the README prints it (one line, a `\\` continuation allowed)."""
    text = (ROOT / "README.md").read_text()
    start = text.index(".venv-label/bin/python -m monailabel.main start_server")
    lines = []
    for line in text[start:].splitlines():
        lines.append(line.rstrip().rstrip("\\"))
        if not line.rstrip().endswith("\\"):
            break
    return shlex.split(" ".join(lines).split("#")[0])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    studies = tmp_path_factory.mktemp("studies")
    moved, truth, none = moved_atlas(studies)
    (studies / "oasis_demo.nii.gz").write_bytes((ROOT / "data" / "demo" / "fixed_t1.nii.gz").read_bytes())
    from common.engines.atlas import default_atlas

    (studies / "atlas_t1.nii.gz").write_bytes(Path(default_atlas(1)[0]).read_bytes())
    cmd = readme_command()
    assert cmd[:5] == [".venv-label/bin/python", "-m", "monailabel.main", "start_server", "--app"], cmd
    cmd[0] = str(LABEL_PY)
    cmd[cmd.index("--studies") + 1] = str(studies)
    port = _free_port()
    cmd += ["--conf", "bundles_dir", str(ROOT / "bundles"), "--host", "127.0.0.1", "--port", str(port)]
    log_path = tmp_path_factory.mktemp("log") / "server.log"
    log = open(log_path, "w")
    # as a user runs it: from the repository root, no venv activated, no PYTHONPATH
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited ({proc.returncode}): {log_path.read_text()[-4000:]}")
        try:
            if _get(base + "/info/", timeout=5)[0] == 200:
                break
        except OSError:
            pass
        time.sleep(2)
    else:
        proc.kill()
        raise AssertionError(f"server did not answer /info/: {log_path.read_text()[-4000:]}")
    yield {"base": base, "truth": truth, "none": none, "moved": moved, "studies": studies, "proc": proc,
           "log": log_path}  # fmt: skip
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def segmented(server, tmp_path_factory):
    """One atlas segmentation of the moved atlas through the client, as Slicer's module asks for it."""
    dest = tmp_path_factory.mktemp("seg") / "labels.nii.gz"
    deadline = time.time() + 180  # the app loads ITK and MONAI in the background at start
    while "warmed up" not in server["log"].read_text() and time.time() < deadline:
        time.sleep(1)
    t0 = time.perf_counter()
    answer = _client(server, "infer", model="hybrid_loss", image_id="moved_atlas", params={}, dest=str(dest))
    seconds = time.perf_counter() - t0
    assert answer["ok"], answer
    print(f"per-click time (request to label file, client side): {seconds:.1f} s; server: "
          f"{answer['result']['params']['latencies']}")  # fmt: skip
    return {"file": dest, "params": answer["result"]["params"], "seconds": seconds}


def test_info_lists_a_segmentation_and_a_registration_model_per_bundle(server):
    answer = _client(server, "info")
    assert answer["ok"], answer
    models = answer["result"]["models"]
    seg, reg = models["hybrid_loss"], models["register_hybrid_loss"]
    assert seg["type"] == "segmentation" and seg["dimension"] == 3
    assert sorted(seg["labels"].values()) == list(range(1, 33))
    assert seg["labels"]["left hippocampus"] == 14 and seg["labels"]["right ventral DC"] == 32
    assert reg["type"] == "others" and "moving" in reg["config"]
    datastore = _client(server, "datastore")["result"]
    assert {"moved_atlas", "oasis_demo", "atlas_t1"} <= set(datastore["objects"])


def test_slicer_module_mapping_gives_every_structure_its_own_segment(server, segmented, tmp_path):
    """Replay the module: value i+1 -> i-th label name (params' label_names, else /info's, sorted by value)."""
    info = _client(server, "info")["result"]["models"]["hybrid_loss"]
    names = segmented["params"].get("label_names") or info["labels"]
    assert names == info["labels"]
    out, ref = nib.load(segmented["file"]), nib.load(server["moved"])
    assert out.shape == ref.shape and np.allclose(out.affine, ref.affine, atol=1e-3)
    values = np.asarray(out.dataobj)
    segments = slicer_segments(values, names)
    # the server's FreeSurfer-coded result, downloaded: each segment is exactly its structure
    status, body = _get(server["base"] + segmented["params"]["downloads"]["labels.nii.gz"])
    assert status == 200
    (tmp_path / "fs.nii.gz").write_bytes(body)
    fs = np.asarray(nib.load(tmp_path / "fs.nii.gz").dataobj)
    for code, name in BRAIN_EVAL_LABELS.items():
        assert np.array_equal(segments[name], fs == code), name
        assert segments[name].sum() > 0, f"{name}: no voxels"  # right hemisphere included
    score = dice(values, to_slicer_values(server["truth"]))
    chance = dice(to_slicer_values(server["none"]), to_slicer_values(server["truth"]))
    print(f"atlas segmentation Dice {score:.3f} (no registration {chance:.3f})")
    assert score > 0.75 and score > chance + 0.2, (score, chance)


def test_the_transform_and_the_atlas_are_downloadable_and_reproduce_the_labels(server, segmented, tmp_path):
    """What a Slicer on another machine does: fetch the field and the atlas, apply the field to the atlas labels."""
    downloads = segmented["params"]["downloads"]
    files = {}
    for key in ("displacement_itk.nii.gz", "affine.tfm", "labels.nii.gz", "atlas_labels", "atlas_t1"):
        status, body = _get(server["base"] + downloads[key])
        assert status == 200, (key, body[:300])
        files[key] = tmp_path / key.replace("atlas_labels", "atlas_labels.nii.gz").replace("atlas_t1", "t1.nii.gz")
        files[key].write_bytes(body)
    atlas = nib.load(files["atlas_labels"])
    assert sorted(np.unique(np.asarray(atlas.dataobj)))[-1] == 32  # served in the same 1..32 values
    field = itk.imread(str(files["displacement_itk.nii.gz"]))
    d = np.asarray(itk.array_from_image(field), dtype=np.float64).transpose(2, 1, 0, 3)
    origin, spacing, direction = (
        np.array(field.GetOrigin()),
        np.array(field.GetSpacing()),
        np.array(field.GetDirection()),
    )
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in d.shape[:3]], indexing="ij"), -1).astype(float)
    lps = origin + (idx * spacing) @ direction.T + d
    inv = np.linalg.inv(atlas.affine)
    vox = (lps * np.array([-1, -1, 1])) @ inv[:3, :3].T + inv[:3, 3]
    warped = map_coordinates(np.asarray(atlas.dataobj), vox.reshape(-1, 3).T, order=0).reshape(d.shape[:3])
    served = np.asarray(nib.load(segmented["file"]).dataobj)
    assert dice(warped, served) > 0.85  # nearest vs one-hot linear label warping of the same transform
    assert len(itk.transformread(str(files["affine.tfm"]))) == 1
    assert nib.load(files["atlas_t1"]).shape == atlas.shape
    status, body = _get(server["base"] + "/registration/outputs/../hybrid_loss/labels.nii.gz")  # model ".."
    assert status == 404 and b"not a result file" in body, body
    # outputs live under the studies folder, not in the repository's app folder
    assert (server["studies"] / "registration_outputs" / "hybrid_loss" / "moved_atlas" / "labels.nii.gz").is_file()
    assert not (ROOT / "scripts" / "monailabel_app" / "outputs").exists()


def test_register_two_datastore_images_returns_the_warped_moving_image(server, tmp_path):
    dest = tmp_path / "warped.nii.gz"
    answer = _client(server, "infer", model="register_hybrid_loss", image_id="moved_atlas",
                     params={"moving": "atlas_t1"}, dest=str(dest))  # fmt: skip
    assert answer["ok"], answer
    warped, fixed = nib.load(dest), nib.load(server["moved"])
    assert warped.shape == fixed.shape and np.allclose(warped.affine, fixed.affine, atol=1e-3)
    f, w = np.asarray(fixed.dataobj, np.float64).ravel(), np.asarray(warped.dataobj, np.float64).ravel()
    ncc = float(np.corrcoef(f, w)[0, 1])
    assert ncc > 0.9, ncc
    params = answer["result"]["params"]
    assert params["moving"] == "atlas_t1" and params["fixed"] == "moved_atlas"
    assert _get(server["base"] + params["downloads"]["displacement_itk.nii.gz"])[0] == 200
    missing = _client(server, "infer", model="register_hybrid_loss", image_id="moved_atlas", params={},
                      dest=str(tmp_path / "x.nii.gz"))  # fmt: skip
    assert not missing["ok"] and "Status: 400" in missing["error"] and "moving" in missing["error"]


def test_user_errors_get_4xx_with_the_reason_and_the_server_keeps_serving(server, tmp_path):
    base = server["base"]
    status, body = _post(base + "/infer/no_such_model?image=moved_atlas", fields={"params": "{}"})
    assert status == 404 and b"hybrid_loss" in body, body
    status, body = _post(base + "/infer/hybrid_loss?image=no_such_image", fields={"params": "{}"})
    assert status == 404 and b"no_such_image" in body, body
    junk = b"\x1f\x8b\x08\x00 definitely not a volume"
    status, body = _post(base + "/infer/hybrid_loss?image=upload", fields={"params": "{}"}, file=("scan.nii.gz", junk))
    assert status == 400 and b"scan.nii.gz" in body, body
    status, body = _post(base + "/infer/hybrid_loss?image=moved_atlas",
                         fields={"params": json.dumps({"instance_iterations": "many"})})  # fmt: skip
    assert status == 400 and b"instance_iterations" in body, body
    (tmp_path / "junk.nii.gz").write_bytes(junk)
    upload = _client(server, "upload_image", image_in=str(tmp_path / "junk.nii.gz"), image_id="junk")
    assert not upload["ok"] and "Status: 400" in upload["error"] and "junk" in upload["error"], upload
    assert "junk" not in _client(server, "datastore")["result"]["objects"]
    small = tmp_path / "small_label.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10), np.uint8), np.eye(4)), small)
    saved = _client(server, "save_label", image_id="moved_atlas", label_in=str(small), tag="final")
    assert not saved["ok"] and "Status: 400" in saved["error"] and "shape" in saved["error"], saved
    fs_coded = tmp_path / "fs_label.nii.gz"  # FreeSurfer codes (e.g. the downloaded labels.nii.gz) are refused
    nib.save(nib.Nifti1Image(server["truth"], nib.load(server["moved"]).affine), fs_coded)
    saved = _client(server, "save_label", image_id="moved_atlas", label_in=str(fs_coded), tag="final")
    assert not saved["ok"] and "Status: 400" in saved["error"] and "1..32" in saved["error"], saved
    status, body = _post(
        base + "/infer/hybrid_loss?image=moved_atlas", fields={"params": json.dumps({"device": "gpu"})}
    )
    assert status == 400 and b"device" in body, body
    status, body = _post(base + "/infer/register_hybrid_loss?image=moved_atlas",
                         fields={"params": json.dumps({"moving": "/etc/hostname"})})  # fmt: skip
    assert status == 404 and b"not an image of the datastore" in body, body
    assert server["proc"].poll() is None
    assert _get(base + "/info/")[0] == 200


def test_the_server_answers_info_while_an_inference_runs(server, tmp_path):
    done: dict = {}

    def run():
        t0 = time.perf_counter()
        done["status"], done["body"] = _post(server["base"] + "/infer/hybrid_loss?image=oasis_demo&output=json",
                                             fields={"params": "{}"})  # fmt: skip
        done["seconds"] = time.perf_counter() - t0

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(1.5)  # the request is in (the affine step alone takes > 2.5 s on 2 cores)
    waits, during = [], 0
    while worker.is_alive():
        t0 = time.perf_counter()
        assert _get(server["base"] + "/info/", timeout=10)[0] == 200
        waits.append(time.perf_counter() - t0)
        during += int(worker.is_alive())  # answered while the inference still ran
        time.sleep(0.5)
    worker.join(600)
    assert done.get("status") == 200, done
    assert during >= 2, f"only {during} /info/ answers came while the inference ran; the check proved little"
    # a blocked server would hold /info/ until the inference ends (tens of seconds); on one loaded core a single answer
    # has taken 5.4 s while the rest came within 0.1 s, so the bound is on the typical answer with room for one stall
    assert sorted(waits)[len(waits) // 2] < 1 and max(waits) < 10, waits
    # the real T1 (OASIS demo, 1 mm): labels on its grid, nearly all 32 structures
    params = json.loads(done["body"])
    print(f"per-click time, real 1 mm T1: {done['seconds']:.1f} s (server: {params['latencies']})")
    status, body = _get(server["base"] + params["downloads"]["labels.nii.gz"])
    assert status == 200
    (tmp_path / "demo_labels.nii.gz").write_bytes(body)
    labels, ref = nib.load(tmp_path / "demo_labels.nii.gz"), nib.load(ROOT / "data" / "demo" / "fixed_t1.nii.gz")
    assert labels.shape == ref.shape and np.allclose(labels.affine, ref.affine, atol=1e-3)
    assert len(np.unique(np.asarray(labels.dataobj))) >= 30  # background + nearly all 32 structures


def test_next_sample_strategies_pick_datastore_images(server):
    images = set(_client(server, "datastore")["result"]["objects"])
    for strategy in ("random", "first"):
        answer = _client(server, "next_sample", strategy=strategy, params={})
        assert answer["ok"] and answer["result"]["id"] in images, answer


def test_fine_tuning_through_the_client_changes_the_weights_lowers_the_loss_and_is_served(server, tmp_path):
    """Last in the file: afterwards the model serves the fine-tuned weights."""
    params = {"max_iterations": 4, "max_pairs": 4}
    started = _client(server, "train_start", model="hybrid_loss", params=params)
    assert started["ok"], started
    t0, status = time.time(), None
    while time.time() - t0 < 900:
        status = _client(server, "train_status")["result"]
        if status.get("status") in ("DONE", "ERROR"):
            break
        time.sleep(5)
    assert status and status.get("status") == "DONE", (status, server["log"].read_text()[-3000:])
    stats = _client(server, "info")["result"]["train_stats"]["hybrid_loss"]
    print(f"fine-tune through the client: {stats}")
    assert stats["iterations"] == 4 and stats["pairs"] == 4 and stats["tensors_changed"] > 0
    assert stats["loss_after"] < stats["loss_before"], stats
    weights = server["studies"] / "registration_models" / "hybrid_loss" / "model.pt"
    assert weights.is_file()
    answer = _client(server, "infer", model="hybrid_loss", image_id="moved_atlas", params={},
                     dest=str(tmp_path / "l.nii.gz"))  # fmt: skip
    assert answer["ok"] and answer["result"]["params"]["weights"] == str(weights.resolve()), answer
