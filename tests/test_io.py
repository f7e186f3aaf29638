r"""Saved posteriors: version-1 files reproduce their draws; malformed or hostile files give PosteriorFileError.

Every hostile case below is refused before a network is built (so nothing large is
allocated): the tests assert the error type and that the message names the problem.
"""

import io
import json
import time
import zipfile

import numpy as np
import pytest
import torch

import bayesinv
from bayesinv.errors import PosteriorFileError

DATA = __import__("pathlib").Path(__file__).parent / "data"
METHODS = ["cond_score", "flow", "vae", "csd_star"]


@pytest.mark.parametrize("method", METHODS)
def test_version_1_files_load_and_reproduce_their_draws(method):
    # the fixtures were written at 74f82f5, before the amortized layer (tests/data/make_v1_fixtures.py)
    ref = np.load(DATA / f"{method}_v1_draws.npz")
    post = bayesinv.load(DATA / f"{method}_v1.bayesinv")
    assert post.method == method
    options = {"cond_score": dict(sampler="sde", steps=20), "csd_star": dict(start=ref["start"]) if "start" in ref else {}}
    draws = post.sample(ref["y"], int(ref["n"]), seed=int(ref["seed"]), **options.get(method, {}))
    for name, value in draws.items():
        np.testing.assert_allclose(value.numpy(), ref[f"draw_{name}"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_version_2_round_trip(method, tmp_path):
    post = bayesinv.load(DATA / f"{method}_v1.bayesinv")
    again = bayesinv.load(post.save(tmp_path / "p.bayesinv"))
    with zipfile.ZipFile(tmp_path / "p.bayesinv") as zf:
        assert json.loads(zf.read("meta.json"))["format_version"] == 2
    ref = np.load(DATA / f"{method}_v1_draws.npz")
    opts = {"start": ref["start"]} if method == "csd_star" else {}
    a, b = post.sample(ref["y"], 4, seed=1, **opts), again.sample(ref["y"], 4, seed=1, **opts)
    assert all(torch.equal(a[k], b[k]) for k in a)


def parts(method: str) -> tuple[dict, dict]:
    with zipfile.ZipFile(DATA / f"{method}_v1.bayesinv") as zf:
        meta = json.loads(zf.read("meta.json"))
        tensors = torch.load(io.BytesIO(zf.read("tensors.pt")), weights_only=True)
    return meta, tensors


def write(path, meta=None, tensors=None, *, meta_bytes=None, tensors_bytes=None, extra=None):
    if tensors_bytes is None:
        buf = io.BytesIO()
        torch.save(tensors, buf)
        tensors_bytes = buf.getvalue()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("meta.json", meta_bytes if meta_bytes is not None else json.dumps(meta))
        zf.writestr("tensors.pt", tensors_bytes)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def refused(path, match):
    t0 = time.perf_counter()
    with pytest.raises(PosteriorFileError, match=match):
        bayesinv.load(path)
    assert time.perf_counter() - t0 < 10


def test_huge_hidden_sizes_are_refused_before_allocation(tmp_path):
    meta, tensors = parts("flow")
    meta["config"]["architecture"]["hidden"] = [40000, 40000]  # 6.4 GB if built
    refused(write(tmp_path / "h.bayesinv", meta, tensors), r"hidden\[0\] = 40000 exceeds")
    meta, tensors = parts("vae")
    meta["config"]["architecture"]["hidden"] = [40000, 40000]
    refused(write(tmp_path / "v.bayesinv", meta, tensors), "exceeds")
    meta, tensors = parts("cond_score")
    meta["config"]["net"]["hidden"] = [40000, 40000]
    refused(write(tmp_path / "c.bayesinv", meta, tensors), "exceeds")


def test_huge_number_of_transforms_is_refused(tmp_path):
    meta, tensors = parts("flow")
    meta["config"]["architecture"]["num_transforms"] = 200000
    refused(write(tmp_path / "t.bayesinv", meta, tensors), "num_transforms = 200000 exceeds")
    meta["config"]["architecture"]["num_transforms"] = 5  # small but wrong: the weights do not fit
    refused(write(tmp_path / "t5.bayesinv", meta, tensors), "do not fit the network")
    meta, tensors = parts("flow")
    meta["config"]["architecture"]["hidden"] = [16] * 5000  # a long list of small layers
    refused(write(tmp_path / "l.bayesinv", meta, tensors), "entries, more than")


def test_zip_bomb_is_refused_by_member_size_caps(tmp_path):
    meta, _ = parts("flow")
    path = tmp_path / "bomb.bayesinv"
    chunk = bytes(2**24)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("meta.json", json.dumps(meta))
        with zf.open("tensors.pt", "w", force_zip64=True) as fh:
            for _ in range(128):  # 2 GiB of zeros, about 2 MB compressed
                fh.write(chunk)
    assert path.stat().st_size < 4 * 2**20
    refused(path, "ratio over")
    big_meta = tmp_path / "meta.bayesinv"
    write(big_meta, tensors={}, meta_bytes=b" " * (5 * 2**20))
    refused(big_meta, "more than the")


def test_meta_that_is_not_utf8_or_not_an_object(tmp_path):
    _, tensors = parts("flow")
    refused(write(tmp_path / "a.bayesinv", tensors=tensors, meta_bytes=b"\xff\xfe{\x00"), "not UTF-8")
    refused(write(tmp_path / "b.bayesinv", tensors=tensors, meta_bytes=b"[1, 2]"), "JSON object")
    refused(write(tmp_path / "c.bayesinv", tensors=tensors, meta_bytes=b"{not json"), "not JSON")


@pytest.mark.parametrize("key", ["method", "config", "target", "condition", "format", "format_version"])
def test_missing_keys(key, tmp_path):
    meta, tensors = parts("cond_score")
    del meta[key]
    refused(write(tmp_path / "m.bayesinv", meta, tensors), key if key != "format" else "not a bayesinv posterior file")


@pytest.mark.parametrize("source, other", [("flow", "vae"), ("vae", "flow"), ("cond_score", "flow"), ("flow", "cond_score"),
                                           ("cond_score", "csd_star"), ("flow", "gauss_newton"), ("flow", "nope")])  # fmt: skip
def test_method_swapped_for_another(source, other, tmp_path):
    meta, tensors = parts(source)
    meta["method"] = other
    refused(write(tmp_path / "s.bayesinv", meta, tensors), "method|network|weights")


def test_format_version_of_the_wrong_type(tmp_path):
    meta, tensors = parts("flow")
    for bad in ("1", 1.0, True, None, [1]):
        meta["format_version"] = bad
        refused(write(tmp_path / "v.bayesinv", meta, tensors), "format_version must be an integer")
    meta["format_version"] = 3
    refused(write(tmp_path / "v3.bayesinv", meta, tensors), "reads versions")


def test_target_shape_that_does_not_match_the_weights(tmp_path):
    for method in ("flow", "cond_score", "vae"):
        meta, tensors = parts(method)
        meta["target"]["shapes"] = [[3]]
        refused(write(tmp_path / f"{method}.bayesinv", meta, tensors), r"x_norm.shift has shape \(2,\).*needs \(3,\)")
    meta, tensors = parts("flow")
    meta["condition"]["shapes"] = [[2, 1, 1, 1, 1, 1, 1, 1, 1]]
    refused(write(tmp_path / "deep.bayesinv", meta, tensors), "invalid shape")
    meta, tensors = parts("flow")
    meta["target"] = {"names": ["theta"], "shapes": [["2"]]}
    refused(write(tmp_path / "str.bayesinv", meta, tensors), "invalid shape")


def test_weights_that_are_not_a_dict_of_tensors_or_do_not_fit(tmp_path):
    meta, tensors = parts("flow")
    refused(write(tmp_path / "list.bayesinv", meta, [1, 2, 3]), "dict")
    refused(write(tmp_path / "names.bayesinv", meta, {**tensors, "net.extra": torch.zeros(2)}), "unexpected")
    key = next(k for k in tensors if k.startswith("net.") and tensors[k].dim() == 2)
    refused(write(tmp_path / "shape.bayesinv", meta, {**tensors, key: torch.zeros(3, 3)}), "has shape")
    refused(write(tmp_path / "extra.bayesinv", meta, tensors, extra={"evil.py": b"print(1)"}), "members")
    refused(write(tmp_path / "types.bayesinv", {**meta, "transforms": [1]}, tensors), "transforms")


def test_meta_values_of_the_wrong_kind(tmp_path):
    meta, tensors = parts("flow")
    for key, value in (("transforms", {"theta": "sqrt"}), ("transforms", {"other": "log"}), ("observed", ["nope"]),
                       ("observed", [1]), ("obs_keys", {"y": 3}), ("info", 5)):  # fmt: skip
        refused(write(tmp_path / "k.bayesinv", {**meta, key: value}, tensors), key)
