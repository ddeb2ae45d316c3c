"""Release packaging + `monai.bundle download` from a local HTTP server on 127.0.0.1, with the hash check."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
from scripts.release import package  # noqa: E402
from tests.bundles.test_bundles import demo_pair  # noqa: E402

NAME = "cardiac_cine_ngf_bspline"


@pytest.fixture()
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _bundle_with_weights(tmp_path: Path) -> Path:
    from monai.bundle import ConfigParser

    src = ROOT / "bundles" / NAME
    b = tmp_path / "src" / NAME
    shutil.copytree(src, b, ignore=shutil.ignore_patterns("runs", "eval", "models"))
    meta_path = b / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["weights_trained"] = False  # the random weights below are not trained
    meta_path.write_text(json.dumps(meta, indent=2))
    parser = ConfigParser()
    parser.read_config(str(b / "configs" / "inference.json"))
    parser["bundle_root"] = str(b)
    (b / "models").mkdir()
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), b / "models" / "model.pt")
    return b


def meta_version(b: Path) -> str:
    return json.loads((b / "configs" / "metadata.json").read_text())["version"]


def _monai(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_download_from_local_server_runs_and_tampered_weights_are_refused(tmp_path, server):
    www, url = server
    b = _bundle_with_weights(tmp_path)
    with pytest.raises(SystemExit, match="refusing to publish untrained weights"):
        package(b, www, url)
    entry = package(b, www, url, allow_untrained=True)
    info = json.loads((www / "model_info.json").read_text())
    assert info[f"{NAME}_v{meta_version(b)}"]["sha256"] == entry["sha256"]
    dl = tmp_path / "downloaded"
    proc = _monai("download", "--name", NAME, "--url", entry["source"], "--bundle_dir", str(dl), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = dl / NAME
    assert (got / "configs" / "inference.json").is_file() and not (got / "models" / "model.pt").exists()
    proc = _monai("download_large_files", "--bundle_path", str(got), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (got / "models" / "model.pt").read_bytes() == (b / "models" / "model.pt").read_bytes()
    # the downloaded bundle runs inference
    files = demo_pair(tmp_path, (100, 90))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "common", "register", "--bundle", str(got), "--moving", files["moving"],
         "--fixed", files["fixed"], "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "moving_to_fixed" / "warped.nii.gz").is_file()
    # tampered weights on the server: a fresh download is refused by the sha256 check
    weights = www / Path(entry["weights_url"]).name
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    (got / "models" / "model.pt").unlink()
    proc = _monai("download_large_files", "--bundle_path", str(got), cwd=tmp_path)
    assert proc.returncode != 0
    assert "sha256" in proc.stderr.lower() or "hash" in proc.stderr.lower()
    assert not (got / "models" / "model.pt").exists()


def _common(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "common", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})  # fmt: skip


def test_download_by_name_from_the_release_index(tmp_path, server):
    www, url = server
    b = _bundle_with_weights(tmp_path)
    package(b, www, url, allow_untrained=True)
    dl = tmp_path / "by_name"
    proc = _common(
        "download", "--name", NAME, "--index", f"{url}/model_info.json", "--bundle_dir", str(dl), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (dl / NAME / "models" / "model.pt").read_bytes() == (b / "models" / "model.pt").read_bytes()
    assert (dl / NAME / "common" / "__init__.py").is_file()  # the release carries its code
    proc = _common(
        "download", "--name", "nope", "--index", f"{url}/model_info.json", "--bundle_dir", str(dl), cwd=tmp_path
    )
    assert proc.returncode == 2 and f"no bundle named 'nope' (index lists: {NAME})" in proc.stderr
    # a tampered zip is refused before anything is unpacked
    zpath = www / f"{NAME}_v{meta_version(b)}.zip"
    zpath.write_bytes(zpath.read_bytes() + b"x")
    proc = _common("download", "--name", NAME, "--index", f"{url}/model_info.json", "--bundle_dir", str(tmp_path / "t"),
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2 and "differs from the index" in proc.stderr and not (tmp_path / "t" / NAME).exists()
