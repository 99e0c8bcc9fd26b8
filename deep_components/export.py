"""Exporting a run's towers as files another runtime loads: ONNX (onnxruntime, any language) or
TorchScript (libtorch).

    python -m deep_components.export --run_dir RUN --format onnx [--out DIR]

DIR (default ``RUN/export-<format>``) holds one file per stage tower, in cascade order:

    stage<k>_<name>.<ext>                  DIN / MLP: (context, history, history_mask, items)
                                           -> scores [B, N]
    stage<k>_<name>_user.<ext>, _item.<ext>  DSSM: the user tower (context, history,
                                           history_mask) -> [B, 32] and the item tower
                                           (items [M, 8]) -> [M, 32]; the stage's score of a
                                           pair is the inner product of the two vectors, so
                                           item vectors can be computed offline
    vocabulary.npz                         the compact vocabulary (absent for --vocab full)
    manifest.json                          every file's inputs and outputs (names, shapes,
                                           dtypes), what each input column holds, how raw
                                           RecFlow ids become table rows, and the check below

The export is checked before it is published: the exported files score the first requests of
the run's test day (when its data folder is there) and must agree with the framework's towers
to 1e-5 (``verified`` in the manifest); onnxruntime is the ``[export]`` extra.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import UsageError, report_error
from .parsing import OneLineParser

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
#: the largest |exported - framework| score the check accepts
TOLERANCE = 1e-5
OPSET = 17

#: what each input column holds (DayData's arrays; ids shifted: raw + 1, 0 = padding)
COLUMNS = {
    "context": ["request weekday (1..7, Monday 1)", "request hour (1..24)", "request minute (1..60)",
                "user_id", "device_id", "gender", "age", "province"],
    "history": ["video_id", "author_id", "category_level_two", "category_level_one (raw)",
                "upload_type"],
    "items": ["video_id", "author_id", "category_level_two",
              "category_level_one (raw; 2 in an empty slot)", "upload_type", "upload weekday",
              "upload hour", "upload minute"],
}
#: input name -> (symbolic shape, dtype)
INPUTS = {"context": (["batch", 8], "int32"), "history": (["batch", "history", 5], "int32"),
          "history_mask": (["batch", "history"], "bool"),
          "items": (["batch", "slots", 8], "int32")}


class _Scores(nn.Module):
    """A whole tower: (context, history, history_mask, items) -> scores [B, N]."""

    def __init__(self, tower: nn.Module):
        super().__init__()
        self.tower = tower

    def forward(self, context, history, history_mask, items):
        return self.tower(context, history, history_mask, items)


class _UserVectors(nn.Module):
    """DSSM's user tower: (context, history, history_mask) -> [B, 32]."""

    def __init__(self, tower: nn.Module):
        super().__init__()
        self.tower = tower

    def forward(self, context, history, history_mask):
        return self.tower.user_vectors(context, history, history_mask)


class _ItemVectors(nn.Module):
    """DSSM's item tower: items [M, 8] -> [M, 32]."""

    def __init__(self, tower: nn.Module):
        super().__init__()
        self.tower = tower

    def forward(self, items):
        return self.tower.item_vectors(items)


def parts(spec, models: list[nn.Module]) -> list[dict[str, Any]]:
    """What is written per stage: {stage, tower, role, name, module, inputs, output}."""
    out = []
    for k, (st, m) in enumerate(zip(spec.stages, models)):
        base = f"stage{k}_{st.name}"
        if st.tower == "dssm":
            out.append({"stage": st.name, "tower": st.tower, "role": "user", "name": f"{base}_user",
                        "module": _UserVectors(m), "inputs": ["context", "history", "history_mask"],
                        "output": ("user_vectors", ["batch", 32])})
            out.append({"stage": st.name, "tower": st.tower, "role": "item", "name": f"{base}_item",
                        "module": _ItemVectors(m), "inputs": ["items"],
                        "output": ("item_vectors", ["items", 32])})
        else:
            out.append({"stage": st.name, "tower": st.tower, "role": "scores", "name": base,
                        "module": _Scores(m), "inputs": list(INPUTS),
                        "output": ("scores", ["batch", "slots"])})
    return out


def example_inputs(batch: dict[str, torch.Tensor], part: dict) -> tuple[torch.Tensor, ...]:
    if part["role"] == "item":
        return (batch["items"].reshape(-1, 8),)
    return tuple(batch[n] for n in part["inputs"])


def write_part(part: dict, example: tuple, path: Path, fmt: str) -> None:
    """Trace ``part``'s module on ``example`` and write it as ``fmt``."""
    import warnings

    module = part["module"].eval()
    with torch.no_grad(), warnings.catch_warnings():
        # the tracers' notices (a constant padding index, TorchScript's deprecation): the check
        # against the towers decides whether the file is right
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(module, example, check_trace=False), str(path))
            return
        name, out_shape = part["output"]
        dynamic = {n: {i: d for i, d in enumerate(INPUTS[n][0]) if isinstance(d, str)}
                   for n in part["inputs"]}
        if part["role"] == "item":
            dynamic = {"items": {0: "items"}}
        dynamic[name] = {i: d for i, d in enumerate(out_shape) if isinstance(d, str)}
        torch.onnx.export(module, example, str(path), input_names=part["inputs"],
                          output_names=[name], dynamic_axes=dynamic, opset_version=OPSET,
                          dynamo=False)


class Loaded:
    """An exported file, loaded: ``run(*numpy arrays) -> numpy array``."""

    def __init__(self, path: Path, fmt: str, inputs: list[str]):
        self.inputs = inputs
        if fmt == "onnx":
            try:
                import onnxruntime as ort
            except ImportError:
                raise UsageError("onnxruntime is not installed: pip install onnxruntime (or the "
                                 "package's [export] extra) to check an ONNX export") from None
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            self.session = ort.InferenceSession(str(path), opts,
                                                providers=["CPUExecutionProvider"])
            self.module = None
        else:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                self.module = torch.jit.load(str(path))
            self.session = None

    def run(self, *arrays: np.ndarray) -> np.ndarray:
        if self.session is not None:
            return self.session.run(None, dict(zip(self.inputs, arrays)))[0]
        with torch.no_grad():
            return self.module(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)).numpy()


def exported_scores(loaded: dict[str, Loaded], part_list: list[dict],
                    batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every stage's scores [B, N] of ``batch`` from the exported files (a DSSM stage: the inner
    product of its user and item vectors)."""
    out, vectors = {}, {}
    for p in part_list:
        f = loaded[p["name"]]
        if p["role"] == "scores":
            out[p["stage"]] = f.run(*(batch[n] for n in p["inputs"]))
        elif p["role"] == "user":
            vectors[(p["stage"], "user")] = f.run(*(batch[n] for n in p["inputs"]))
        else:
            B, N, _ = batch["items"].shape
            vectors[(p["stage"], "item")] = f.run(batch["items"].reshape(-1, 8)).reshape(B, N, -1)
        if (p["stage"], "user") in vectors and (p["stage"], "item") in vectors:
            u, v = vectors.pop((p["stage"], "user")), vectors.pop((p["stage"], "item"))
            out[p["stage"]] = np.einsum("bd,bnd->bn", u, v)
    return out


def rows_of_raw_ids(vocabulary: dict[str, np.ndarray] | None, field: str,
                    raw: np.ndarray) -> np.ndarray:
    """Table rows (int32) of raw RecFlow ids of ``field``, as the manifest says: shifted id
    ``raw + 1``; with a compact vocabulary, row ``2 + k`` for its k-th id, 1 for an id it does
    not hold; negative raw ids are padding (row 0)."""
    raw = np.asarray(raw, dtype=np.int64)
    shifted = np.where(raw >= 0, raw + 1, 0)
    if vocabulary is None or field not in vocabulary:
        return shifted.astype(np.int32)
    ids = vocabulary[field]
    at = np.minimum(np.searchsorted(ids, shifted), max(len(ids) - 1, 0))
    found = (ids[at] == shifted) if len(ids) else np.zeros(shifted.shape, bool)
    rows = np.where(found, at + 2, 1)
    return np.where(shifted == 0, 0, rows).astype(np.int32)


def _batch_of_day(run, requests: int) -> dict[str, np.ndarray] | None:
    """The first ``requests`` requests of the run's test day, ids on table rows (None when the
    run's data folder is not there)."""
    from .data.batches import TOWER_INPUTS

    day_name = run.config.get("test_day")
    if not day_name or not Path(run.data_dir).is_dir():
        return None
    day = run.load_day(day_name)
    if run.vocab is not None:
        day = run.vocab.apply(day)
    n = min(requests, day.num_requests)
    return {k: np.array(getattr(day, k)[:n]) for k in TOWER_INPUTS}


def _synthetic_batch(models, requests: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch of valid rows for tracing when the data folder is not there."""
    g = np.random.default_rng(seed)
    tables = models[0].emb.tables
    B, H, N = requests, 50, 40

    def col(field, shape):
        return g.integers(1, tables[field].num_embeddings, size=shape).astype(np.int32)

    ctx = np.stack([col(f, (B,)) for f in ("weekday", "hour", "minute", "user_id", "device_id",
                                            "gender", "age", "province")], -1)
    item_fields = ("video_id", "author_id", "category_level_two", "category_level_one",
                   "upload_type", "weekday", "hour", "minute")
    items = np.stack([col(f, (B, N)) for f in item_fields], -1)
    history = np.stack([col(f, (B, H)) for f in item_fields[:5]], -1)
    mask = np.arange(H)[None, :] >= g.integers(0, H, size=(B, 1))
    return {"context": ctx, "history": history, "history_mask": mask, "items": items}


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None,
               check_requests: int = 256, timing: bool = True) -> dict:
    """Export the run's towers (see the module docstring); returns the manifest."""
    from .run_folder import RunFolder

    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if check_requests < 1:
        raise UsageError(f"--check_requests must be >= 1, got {check_requests}")
    folder = RunFolder(run_dir)
    if not folder.has_config():
        raise UsageError(f"{folder.path}: not a run folder (no training there)")
    with folder.lock():              # the export is written while no training changes the towers
        return _export(folder, fmt, out, check_requests, timing)


def _export(folder, fmt: str, out, check_requests: int, timing: bool) -> dict:
    import shutil

    from .atomic import staged, tmp_prefix
    from .data.batches import batch_to_device
    from .models import forward_all
    from .run_folder import TrainedRun

    cpu = torch.device("cpu")
    saved = folder.config()
    spec = folder.spec()
    models, meta, vocab = folder.load_towers(cpu)
    run = TrainedRun(folder, saved, spec, models, meta, vocab, str(saved["data_dir"]))
    for m in models:
        m.float().eval()
    batch_np = _batch_of_day(run, check_requests)
    source = f"the first {check_requests} requests of the test day {saved.get('test_day')}"
    if batch_np is None:
        batch_np, source = _synthetic_batch(models, min(check_requests, 64)), "random valid rows"
    batch = batch_to_device(batch_np, cpu)
    with torch.no_grad():
        reference = {st.name: s.numpy() for st, s in zip(spec.stages, forward_all(models, batch))}
    target = Path(out) if out else folder.path / f"export-{fmt}"
    part_list = parts(spec, models)
    files = []
    if target.exists() and not (target / "manifest.json").is_file() and (
            not target.is_dir() or any(target.iterdir())):
        raise UsageError(f"--out {target}: exists and is not an export; choose another folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    old = None
    with staged(target, directory=True, replace=False) as tmp:
        tmp.chmod(0o755)                                   # a folder others read, like a file
        for p in part_list:
            path = tmp / (p["name"] + FORMATS[fmt])
            write_part(p, example_inputs(batch, p), path, fmt)
            files.append(path)
        loaded = {p["name"]: Loaded(f, fmt, p["inputs"]) for p, f in zip(part_list, files)}
        got = exported_scores(loaded, part_list, batch_np)
        diffs = {k: float(np.abs(got[k] - reference[k]).max()) for k in reference}
        bad = {k: d for k, d in diffs.items() if not d <= TOLERANCE}
        if bad:
            raise UsageError(f"{folder.path}: the exported {fmt} towers differ from the trained "
                             f"ones by up to {max(bad.values()):.3g} (stages {sorted(bad)}); "
                             "nothing was written")
        if vocab is not None:
            np.savez(tmp / "vocabulary.npz", **{f: vocab.ids[f] for f in vocab.ids})
        manifest = _manifest(fmt, saved, spec, run, part_list, files, diffs, source,
                             len(batch_np["context"]))
        if timing:
            manifest["seconds_per_batch"] = _timings(loaded, part_list, batch_np, models, batch)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if target.exists():            # the earlier export goes once this one is complete
            old = target.rename(target.parent / f"{tmp_prefix()}old-{target.name}")
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return manifest


def _manifest(fmt, saved, spec, run, part_list, files, diffs, source, n) -> dict:
    from .data.vocab import COMPACT_FIELDS, LOCATIONS

    def io(names):
        return [{"name": k, "shape": INPUTS[k][0], "dtype": INPUTS[k][1]} for k in names]

    entries = []
    for p, f in zip(part_list, files):
        ins = io(p["inputs"]) if p["role"] != "item" else [
            {"name": "items", "shape": ["items", 8], "dtype": "int32"}]
        name, shape = p["output"]
        entries.append({"stage": p["stage"], "tower": p["tower"], "role": p["role"],
                        "file": f.name, "bytes": f.stat().st_size, "inputs": ins,
                        "outputs": [{"name": name, "shape": shape, "dtype": "float32"}]})
    return {
        "format": fmt, "run": run.identity() | {"run_dir": str(run.folder.path)},
        "setting": spec.name,
        "stages": [{"name": st.name, "tower": st.tower, "quota": st.quota} for st in spec.stages],
        "files": entries,
        "dssm_score": "a DSSM stage's score of (request b, item n) is user_vectors[b] · "
                      "item_vectors[n]",
        "columns": COLUMNS,
        "history": "the most recent rows last; history_mask marks the valid rows (a suffix)",
        "time_zone": saved.get("tz", "Asia/Shanghai"),
        "ids": ("raw RecFlow ids are shifted by one (raw + 1; 0 is padding). "
                + ("With the compact vocabulary (vocabulary.npz: per field the sorted shifted "
                   "ids) the table row of a shifted id s is 2 + k where vocabulary[field][k] "
                   "== s, 1 (the unknown row) when the field does not hold s, 0 for padding; "
                   "category_level_one and the calendar columns are used as they are."
                   if run.vocab is not None else "The tables are full size: the row is the "
                   "shifted id.")),
        "vocabulary": ({"file": "vocabulary.npz",
                        "fields": {f: {"ids": int(len(run.vocab.ids[f])),
                                       "columns": [f"{a}[..., {c}]" for a, c in LOCATIONS[f]]}
                                   for f in COMPACT_FIELDS}}
                       if run.vocab is not None else None),
        "verified": {"on": source, "requests": n, "tolerance": TOLERANCE,
                     "max_abs_diff": diffs},
    }


def _timings(loaded, part_list, batch_np, models, batch, repeats: int = 5) -> dict:
    """Median seconds to score the check batch: the exported files against PyTorch's towers."""
    from .models import forward_all

    def median(fn):
        fn()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts))

    def torch_run():
        with torch.no_grad():
            forward_all(models, batch)

    return {"exported": round(median(lambda: exported_scores(loaded, part_list, batch_np)), 5),
            "pytorch": round(median(torch_run), 5), "requests": int(len(batch_np["context"])),
            "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(prog="python -m deep_components.export", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run_dir", required=True, help="a trained run folder")
    ap.add_argument("--format", choices=sorted(FORMATS), default="onnx")
    ap.add_argument("--out", default=None, help="where to write (default RUN/export-FORMAT)")
    ap.add_argument("--check_requests", type=int, default=256,
                    help="test-day requests the exported files must score like the towers")
    a = ap.parse_args(argv)
    try:
        m = export_run(a.run_dir, a.format, a.out, a.check_requests)
    except (UsageError, OSError, ValueError) as e:
        return report_error(e)
    out = Path(a.out) if a.out else Path(a.run_dir) / f"export-{a.format}"
    for f in m["files"]:
        print(f"{out / f['file']}: {f['stage']} ({f['tower']}, {f['role']}), "
              f"{f['bytes'] / 1e6:.2f} MB")
    v, t = m["verified"], m.get("seconds_per_batch", {})
    print(f"checked on {v['on']}: max |difference| {max(v['max_abs_diff'].values()):.2e} "
          f"(<= {v['tolerance']:g}); one batch of {t.get('requests')}: exported "
          f"{t.get('exported', float('nan')) * 1e3:.1f} ms, PyTorch "
          f"{t.get('pytorch', float('nan')) * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
