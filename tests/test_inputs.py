"""Where export inputs come from: a 3DDFA_V2 checkout (``--upstream``), the data folder, and downloads from a real
HTTP server on 127.0.0.1 (through ``$TDDFA_EDGE_MIRROR``) serving the real files, a tampered one, and upstream-style
pickles that are accepted only after their content check."""

from __future__ import annotations

import functools
import http.server
import pickle
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from tddfa_edge.contracts.errors import DataFileError
from tddfa_edge.export.inputs import load_inputs, resolve_inputs
from tddfa_edge.export.morphable_files import load_dense_model
from tddfa_edge.models.registry import REGISTRY, find

UPSTREAM_FILES = {  # 3DDFA_V2 checkout layout -> data folder file
    "weights/mb05_120x120.pth": "weights/mb05_120x120.pth",
    "FaceBoxes/weights/FaceBoxesProd.pth": "weights/FaceBoxesProd.pth",
    "configs/param_mean_std_62d_120x120.pkl": "weights/param_mean_std_62d_120x120.pkl",
}


def write_upstream_pickles(folder: Path, data_dir: Path, scale_expression: float = 1.0) -> None:
    """``configs/bfm_noneck_v3.pkl`` and ``configs/tri.pkl`` as upstream ships them (dicts / arrays of numpy arrays)."""
    dense = load_dense_model(data_dir / "bfm" / "bfm_noneck_v3.npz")
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {k: v for k, v in dense.items() if k != "tri"}
    arrays["w_exp"] = arrays["w_exp"] * np.float32(scale_expression)
    with open(folder / "bfm_noneck_v3.pkl", "wb") as fh:
        pickle.dump(arrays, fh)
    with open(folder / "tri.pkl", "wb") as fh:
        pickle.dump(dense["tri"].T.copy(), fh)  # upstream stores (T, 3)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory, data_dir) -> Path:
    root = tmp_path_factory.mktemp("3DDFA_V2")
    for rel, source in UPSTREAM_FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(data_dir / source)
    write_upstream_pickles(root / "configs", data_dir)
    return root


@pytest.fixture()
def server(tmp_path, monkeypatch):
    """An HTTP server on 127.0.0.1 laid out like github.com/<owner>/<repo>/raw/master/..., used as the mirror."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("TDDFA_EDGE_MIRROR", f"http://127.0.0.1:{httpd.server_address[1]}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    yield root
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _serve(root: Path, name: str, source: Path) -> Path:
    url = REGISTRY[name].url
    path = root / url.split("github.com/", 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, path)
    return path


def test_inputs_from_an_upstream_checkout(checkout, tmp_path):
    inputs = resolve_inputs("mb05_120x120", "faceboxes", data_dir=tmp_path / "no-data", upstream_dir=checkout)
    for found in (inputs.regressor, inputs.detector, inputs.param_mean_std, inputs.morphable_model, inputs.tri):
        assert found.origin == "upstream checkout" and str(found.path).startswith(str(checkout)), found
    assert inputs.regressor.checked and not inputs.morphable_model.checked  # the pickles' sha256 is not recorded
    loaded = load_inputs(inputs)  # their content check passes
    assert loaded.dense_arrays["tri"].shape == (3, 76073) and loaded.landmark_arrays["u_base"].shape == (204,)


def test_a_checkout_whose_3dmm_is_not_upstreams_is_refused(checkout, tmp_path, data_dir):
    other = tmp_path / "other"
    shutil.copytree(checkout, other, symlinks=True)
    write_upstream_pickles(other / "configs", data_dir, scale_expression=1.05)
    with pytest.raises(DataFileError, match=r"bfm_noneck_v3.pkl is not 3DDFA_V2's 3DMM: it moves the reference landmarks by"):
        load_inputs(resolve_inputs("mb05_120x120", "faceboxes", data_dir=tmp_path / "no-data", upstream_dir=other))


def test_download_checks_the_sha256_and_caches(server, tmp_path, data_dir):
    empty = tmp_path / "no-data"
    with pytest.raises(DataFileError, match="or pass --download to fetch https://github.com/cleardusk"):
        find("mb05_120x120", data_dir=empty)
    _serve(server, "mb05_120x120", data_dir / "weights" / "mb05_120x120.pth")
    found = find("mb05_120x120", data_dir=empty, download=True)
    assert found.origin == "download" and found.checked and found.sha256 == REGISTRY["mb05_120x120"].sha256
    assert found.path == tmp_path / "cache" / "tddfa-edge" / "weights" / "mb05_120x120.pth"
    (server / "cleardusk").rename(server / "gone")  # the cache answers now, no server needed
    assert find("mb05_120x120", data_dir=empty).path == found.path


def test_a_tampered_download_is_refused_and_not_kept(server, tmp_path, data_dir):
    served = _serve(server, "faceboxes", data_dir / "weights" / "FaceBoxesProd.pth")
    data = bytearray(served.read_bytes())
    data[len(data) // 2] ^= 0x01
    served.write_bytes(bytes(data))
    with pytest.raises(DataFileError, match="corrupt or not the expected file"):
        find("faceboxes", data_dir=tmp_path / "no-data", download=True)
    cache = tmp_path / "cache" / "tddfa-edge" / "weights"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_downloaded_pickles_are_kept_only_after_their_content_check(server, tmp_path, data_dir):
    pickles = tmp_path / "pickles"
    write_upstream_pickles(pickles, data_dir, scale_expression=1.05)
    _serve(server, "bfm_noneck_v3_pkl", pickles / "bfm_noneck_v3.pkl")
    _serve(server, "tri_pkl", pickles / "tri.pkl")
    where = dict(data_dir=tmp_path / "no-data", download=True, param_mean_std_path=data_dir / "weights" / "param_mean_std_62d_120x120.pkl",
                 regressor_path=data_dir / "weights" / "mb05_120x120.pth", detector_path=data_dir / "weights" / "FaceBoxesProd.pth")
    inputs = resolve_inputs("mb05_120x120", "faceboxes", **where)
    assert inputs.morphable_model.origin == "download" and inputs.morphable_model.path.is_file()
    with pytest.raises(DataFileError, match="is not 3DDFA_V2's 3DMM"):
        load_inputs(inputs)
    assert not inputs.morphable_model.path.exists() and not inputs.tri.path.exists(), "a file that failed its check stays cached"
    write_upstream_pickles(pickles, data_dir)
    _serve(server, "bfm_noneck_v3_pkl", pickles / "bfm_noneck_v3.pkl")
    _serve(server, "tri_pkl", pickles / "tri.pkl")
    assert load_inputs(resolve_inputs("mb05_120x120", "faceboxes", **where)).dense_arrays["u"].shape == (115095, 1)


def test_a_server_that_is_down_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TDDFA_EDGE_MIRROR", "http://127.0.0.1:9")  # discard port: connection refused
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataFileError, match=r"download of http://127.0.0.1:9/cleardusk/3DDFA_V2/raw/master/weights/mb05_120x120.pth failed"):
        find("mb05_120x120", data_dir=tmp_path / "no-data", download=True)
