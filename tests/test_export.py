"""Exported towers (deep_components.export): every tower kind, both formats, two and three
stages, score requests as the framework does; a DSSM stage is its user · item product."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deep_components.config import RunConfig
from deep_components.errors import UsageError
from deep_components.export import (Loaded, exported_scores, export_run, main, parts,
                                    rows_of_raw_ids)
from deep_components.training import train

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def runs(tiny_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("export-runs")
    out = {}
    for setting in ("two_stage", "three_stage"):
        cfg = RunConfig(setting=setting, method="bce", batch_size=64, data_dir=str(tiny_root),
                        run_dir=str(root / setting), progress=False, device="cpu",
                        tensorboard=False, max_steps=6)
        out[setting] = train(cfg)
    return out


def _framework_scores(run_dir, requests=300):
    """(batch, {stage: scores}) of the first requests of the run's test day, by the towers."""
    from deep_components.data.batches import TOWER_INPUTS, batch_to_device
    from deep_components.models import forward_all
    from deep_components.run_folder import RunFolder

    run = RunFolder(run_dir).open_trained(torch.device("cpu"))
    day = run.vocab.apply(run.load_day(run.config["test_day"]))
    batch = {k: np.array(getattr(day, k)[:requests]) for k in TOWER_INPUTS}
    with torch.no_grad():
        s = forward_all(run.models, batch_to_device(batch, torch.device("cpu")))
    return run, batch, {st.name: x.numpy() for st, x in zip(run.spec.stages, s)}


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("setting,towers", [("two_stage", ["dssm", "din"]),
                                            ("three_stage", ["dssm", "mlp", "din"])])
def test_exported_towers_score_like_the_framework(runs, fmt, setting, towers, tmp_path):
    out = tmp_path / fmt
    manifest = export_run(runs[setting], fmt, out, check_requests=64, timing=False)
    assert [s["tower"] for s in manifest["stages"]] == towers
    ext = ".onnx" if fmt == "onnx" else ".pt"
    names = [f["file"] for f in manifest["files"]]
    assert names[:2] == [f"stage0_retrieval_user{ext}", f"stage0_retrieval_item{ext}"]
    assert len(names) == len(towers) + 1 and all((out / n).is_file() for n in names)
    assert max(manifest["verified"]["max_abs_diff"].values()) <= 1e-5
    # loaded anew, on more requests (another batch size than the one traced) than the check
    run, batch, ref = _framework_scores(runs[setting])
    plist = parts(run.spec, run.models)
    loaded = {p["name"]: Loaded(out / (p["name"] + ext), fmt, p["inputs"]) for p in plist}
    got = exported_scores(loaded, plist, batch)
    for stage, want in ref.items():
        assert got[stage].shape == want.shape == (300, run.spec.num_slots)
        np.testing.assert_allclose(got[stage], want, rtol=0, atol=1e-5)
    # the DSSM stage: the user vectors · the item vectors are the stage's scores
    user, item = (loaded[p["name"]] for p in plist[:2])
    u = user.run(batch["context"], batch["history"], batch["history_mask"])
    v = item.run(batch["items"].reshape(-1, 8)).reshape(300, run.spec.num_slots, -1)
    assert u.shape == (300, 32) and v.shape[-1] == 32
    with torch.no_grad():
        tu = run.models[0].user_vectors(*(torch.from_numpy(batch[k]) for k in
                                          ("context", "history", "history_mask")))
    np.testing.assert_allclose(u, tu.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.einsum("bd,bnd->bn", u, v), ref["retrieval"], rtol=0, atol=1e-5)


def test_the_manifest_names_what_onnxruntime_sees_and_maps_raw_ids(runs, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "onnx"
    export_run(runs["two_stage"], "onnx", out, check_requests=32, timing=False)
    manifest = json.loads((out / "manifest.json").read_text())
    kinds = {"int32": "tensor(int32)", "bool": "tensor(bool)", "float32": "tensor(float)"}
    for f in manifest["files"]:
        s = ort.InferenceSession(str(out / f["file"]), providers=["CPUExecutionProvider"])
        assert [(i.name, i.type, len(i.shape)) for i in s.get_inputs()] == \
            [(i["name"], kinds[i["dtype"]], len(i["shape"])) for i in f["inputs"]]
        assert [o.name for o in s.get_outputs()] == [o["name"] for o in f["outputs"]]
        assert f["bytes"] == (out / f["file"]).stat().st_size > 10_000
    assert manifest["run"]["run_key"] == json.loads((runs["two_stage"] / "config.json")
                                                    .read_text())["run_key"]
    # raw RecFlow ids through the manifest's rule give the rows the framework feeds
    from deep_components.run_folder import RunFolder

    run = RunFolder(runs["two_stage"]).open_trained(torch.device("cpu"))
    day = run.load_day(run.config["test_day"])
    mapped = run.vocab.apply(day)
    vocab = dict(np.load(out / "vocabulary.npz"))
    for field, (array, col) in (("video_id", ("items", 0)), ("user_id", ("context", 3)),
                                ("author_id", ("history", 1))):
        raw = np.asarray(getattr(day, array)[..., col], dtype=np.int64) - 1      # -1: padding
        np.testing.assert_array_equal(rows_of_raw_ids(vocab, field, raw),
                                      getattr(mapped, array)[..., col])
    assert rows_of_raw_ids(vocab, "video_id", np.array([10 ** 9])).tolist() == [1]   # unknown


def test_export_errors_and_a_retrained_run_loses_its_export(runs, tiny_root, tmp_path, capsys):
    assert main(["--run_dir", str(tmp_path / "nothing")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert main(["--run_dir", str(runs["two_stage"]), "--check_requests", "0"]) == 2
    assert "--check_requests must be >= 1" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="exists and is not an export"):
        export_run(runs["two_stage"], "onnx", tmp_path / "busy", check_requests=8)
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"
    run = tmp_path / "again"
    cfg = RunConfig(method="bce", batch_size=64, data_dir=str(tiny_root), run_dir=str(run),
                    progress=False, device="cpu", tensorboard=False, max_steps=2)
    train(cfg)
    assert main(["--run_dir", str(run), "--format", "torchscript", "--check_requests", "16"]) == 0
    assert "max |difference|" in capsys.readouterr().out
    assert (run / "export-torchscript" / "manifest.json").is_file()
    cfg.overwrite = True
    train(cfg)
    assert not (run / "export-torchscript").exists()
