"""scripts/benchmark.py on tiny synthetic 2D pairs (seconds): subprocess per method, metrics, ratios, peers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
from scripts import benchmark  # noqa: E402


def _disc_pair(folder: Path, i: int, shift: float) -> dict[str, str]:
    g = np.stack(np.meshgrid(np.arange(64.0), np.arange(64.0), indexing="ij"))
    aff = np.diag([1.5, 1.5, 1.0, 1.0])
    paths = {}
    for role, dx in (("moving", shift), ("fixed", 0.0)):
        r = np.sqrt((g[0] - 32 - dx) ** 2 + (g[1] - 32) ** 2)
        lab = (r < 14).astype(np.int16) + (r < 8).astype(np.int16)
        img = (lab == 1) * 0.4 + (lab == 2) * 0.9 + 0.02 * np.random.default_rng(i).random(lab.shape)
        for kind, arr in (("image", img.astype(np.float32)), ("label", lab)):
            p = folder / f"p{i}_{role}_{kind}.nii.gz"
            nib.save(nib.Nifti1Image(arr, aff), p)
            paths[f"{role}_{kind}"] = str(p)
    return {"id": f"p{i}", **paths}


def test_speed_ratio_is_computed_pair_by_pair():
    rows = [
        {"pair": "a", "method": "ants", "seconds": 100.0},
        {"pair": "a", "method": "net", "seconds": 2.0},
        {"pair": "b", "method": "ants", "seconds": 10.0},
        {"pair": "b", "method": "net", "seconds": 5.0},
        {"pair": "c", "method": "net", "seconds": 1.0},  # no ANTs run on this pair: no ratio
    ]
    benchmark.speed_ratios(rows)
    got = {(r["pair"], r["method"]): r["speedup_vs_ants"] for r in rows}
    assert got[("a", "net")] == 50.0 and got[("b", "net")] == 2.0 and got[("a", "ants")] == 1.0
    assert got[("c", "net")] is None
    # the mean of per-pair ratios (26x), not the ratio of mean times (55/3.5 = 15.7x)
    assert "26.00" in benchmark.summary_table([r for r in rows if r["method"] == "net" and r["pair"] != "c"])


def test_missing_peers_are_skipped_with_a_message(monkeypatch):
    import common.engines.baselines as bl

    monkeypatch.setattr(bl, "peer_available", lambda name: False)
    todo, notes = benchmark.resolve_methods("zero,ants,elastix", dims=2)
    assert todo == ["zero"]
    assert any("antspyx is not installed" in n for n in notes) and any("itk-elastix" in n for n in notes)
    # `--methods zero,ants` reaches run() as a tuple through fire
    assert benchmark.resolve_methods(("zero", "ants"), dims=2)[0] == ["zero"]
    with pytest.raises(SystemExit, match="unknown method"):
        benchmark.resolve_methods("zero,deeds", dims=2)


def test_run_on_tiny_pairs_writes_table_csv_and_plots(tmp_path):
    pairs = [_disc_pair(tmp_path, i, shift) for i, shift in enumerate((3.0, -2.0))]
    dl = tmp_path / "pairs.json"
    dl.write_text(json.dumps({"test": pairs}))
    out = tmp_path / "bench"
    benchmark.run(datalist=str(dl), methods="zero,classic,bundles", out=str(out), timeout=600)
    rows = list(csv.DictReader(open(out / "results.csv")))
    methods = {r["method"] for r in rows}
    assert {"zero", "classic", "bundle:cardiac_cine_ngf_bspline"} <= methods, methods
    assert not any(r["error"] for r in rows), rows
    by = {(r["pair"], r["method"]): r for r in rows}
    for p in ("p0", "p1"):
        zero, classic = float(by[(p, "zero")]["dice_mean"]), float(by[(p, "classic")]["dice_mean"])
        assert 0.0 < zero < 0.95 and classic > zero  # the shifted discs: registration must improve overlap
        assert float(by[(p, "classic")]["peak_rss_gib"]) > 0.05  # the child's own RSS (python + torch)
    text = (out / "summary.md").read_text()
    assert "| zero |" in text and "| classic |" in text
    for png in ("dice_boxplot.png", "time_vs_dice.png", "qc_montage.png"):
        assert (out / png).stat().st_size > 1000


def test_unlabelled_pairs_are_scored_on_image_ncc_and_fields(tmp_path):
    # like the real OASIS pairs: images only; Dice/HD95 are not scored, image NCC must show the registration
    pairs = [_disc_pair(tmp_path, 0, 3.0)]
    for key in ("moving_label", "fixed_label"):
        pairs[0].pop(key)
    dl = tmp_path / "pairs.json"
    dl.write_text(json.dumps({"test": pairs}))
    out = tmp_path / "bench"
    # bundles too: the all-background stand-in labels must not reach them (a bundle rejects empty label maps)
    benchmark.run(datalist=str(dl), methods="zero,classic,bundles", out=str(out), timeout=600)
    by = {r["method"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert "bundle:cardiac_cine_ngf_bspline" in by, by.keys()
    assert not any(r["error"] for r in by.values()), by
    assert by["zero"]["dice_mean"] == "nan" and by["classic"]["hd95_mean"] == "nan"
    assert by["bundle:cardiac_cine_ngf_bspline"]["dice_mean"] == "nan"
    zero, classic = float(by["zero"]["ncc"]), float(by["classic"]["ncc"])
    assert 0.0 < zero < 0.97 and classic > zero + 0.01, (zero, classic)
    assert float(by["bundle:cardiac_cine_ngf_bspline"]["ncc"]) > zero, by
    assert float(by["classic"]["folding_percent"]) < 1.0
    text = (out / "summary.md").read_text()
    assert "lack a moving or fixed label map" in text and "image NCC" in text
    for png in ("ncc_boxplot.png", "time_vs_ncc.png", "qc_montage.png"):
        assert (out / png).stat().st_size > 1000


def test_a_failed_child_reports_the_root_error_not_the_bundle_runner_wrapper():
    err = """Traceback (most recent call last):
  File "x.py", line 1, in <module>
common.io.nifti.ImageReadError: /data/m_seg.nii.gz: label map is empty (all background).

The above exception was the direct cause of the following exception:

RuntimeError: applying transform <LoadRegistrationPaird>
RuntimeError: Failed to evaluate ConfigExpression:
"$__local_refs['evaluator'].run()"
"""
    assert benchmark.error_line(err) == (
        "common.io.nifti.ImageReadError: /data/m_seg.nii.gz: label map is empty (all background)."
    )
    assert benchmark.error_line("Killed\n") == "Killed"
    assert benchmark.error_line("") == "(no error output)"


def test_image_ncc_is_one_for_identical_images_and_follows_the_field():
    g = np.meshgrid(*(np.arange(24.0),) * 3, indexing="ij")
    fixed = np.exp(-((g[0] - 12) ** 2 + (g[1] - 12) ** 2 + (g[2] - 12) ** 2) / 30.0).astype(np.float32) + 0.1
    moving = np.roll(fixed, 2, axis=0)  # moving(x) = fixed(x - 2): pull-back ddf +2 along axis 0 undoes it
    zero = np.zeros((3, 24, 24, 24), np.float32)
    assert benchmark.image_ncc(fixed, fixed, zero) == pytest.approx(1.0)
    shift = zero.copy()
    shift[0] = 2.0
    assert benchmark.image_ncc(moving, fixed, shift) > 0.99 > benchmark.image_ncc(moving, fixed, zero)
    assert benchmark.image_ncc(moving, fixed, -shift) < benchmark.image_ncc(moving, fixed, zero)


def test_instance_optimisation_methods_are_parsed_expanded_and_forwarded(monkeypatch, tmp_path):
    assert benchmark.split_bundle_method("bundle:brain_mri_prob_diffeo+io50") == ("brain_mri_prob_diffeo", 50)
    assert benchmark.split_bundle_method("bundle:brain_mri_hybrid_loss") == ("brain_mri_hybrid_loss", 0)
    with pytest.raises(SystemExit, match=r"\+io<iterations>"):
        benchmark.split_bundle_method("bundle:brain_mri_prob_diffeo+iofifty")
    # every 3D brain bundle has it (the one engine, issue 25); the 2D cardiac bundle does not
    for name in ("brain_mri_prob_diffeo", "brain_mri_joint_affine", "brain_mri_hybrid_loss", "brain_mri_lumir_cascade"):
        assert benchmark.supports_instance_optimisation(ROOT / "bundles" / name), name
    assert not benchmark.supports_instance_optimisation(ROOT / "bundles" / "cardiac_cine_ngf_bspline")
    with pytest.raises(SystemExit, match="has no instance optimisation"):
        benchmark.resolve_methods("bundle:cardiac_cine_ngf_bspline+io50", dims=2)
    monkeypatch.setattr(
        benchmark, "trained_bundles", lambda dims: ["cardiac_cine_ngf_bspline", "brain_mri_prob_diffeo"]
    )
    todo, _ = benchmark.resolve_methods("zero,bundles", dims=3, instance_iterations=200)
    assert todo == ["zero", "bundle:cardiac_cine_ngf_bspline", "bundle:brain_mri_prob_diffeo",
                    "bundle:brain_mri_prob_diffeo+io200"]  # fmt: skip
    assert "bundle:brain_mri_prob_diffeo+io0" not in benchmark.resolve_methods("bundles", 3, 0)[0]

    # the iteration count reaches the bundle run as its instance_iterations override; none for the network alone
    import common.engines.bundle as eb

    seen: list[dict] = []

    def fake_run(bundle, configs, workflow, **overrides):
        seen.append(overrides)
        d = Path(overrides["output_dir"]) / "pair"
        d.mkdir()
        lab = np.zeros((4, 4, 4), np.int16)
        nib.save(nib.Nifti1Image(lab, np.eye(4)), d / "warped_label.nii.gz")
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), d / "disp.nii.gz")

    monkeypatch.setattr(eb, "run_bundle", fake_run)
    fixed = tmp_path / "fixed_label.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), fixed)
    pair = {"moving_image": "m", "fixed_image": "f", "moving_label": "ml", "fixed_label": str(fixed)}
    benchmark._bundle_result(ROOT / "bundles" / "brain_mri_prob_diffeo", pair, "cpu", 7)
    benchmark._bundle_result(ROOT / "bundles" / "brain_mri_prob_diffeo", pair, "cpu", 0)
    assert seen[0]["instance_iterations"] == 7 and "instance_iterations" not in seen[1]


def test_profile_names_unknown_bundles(monkeypatch):
    monkeypatch.setattr(benchmark, "trained_bundles", lambda dims: ["brain_mri_hybrid_loss", "brain_mri_joint_affine"])
    with pytest.raises(SystemExit, match="not a trained 3D bundle: brain_mri_nonesuch"):
        benchmark.profile(bundles="brain_mri_joint_affine,brain_mri_nonesuch")


def test_jobs_ants_limit_and_resume(tmp_path, monkeypatch):
    import common.engines.baselines as bl

    pairs = [_disc_pair(tmp_path, i, shift) for i, shift in enumerate((3.0, -2.0))]
    dl = tmp_path / "pairs.json"
    dl.write_text(json.dumps({"test": pairs}))
    out = tmp_path / "bench"
    calls = []

    def fake_spawn(args, timeout, threads=0):  # a child that returns the identity field and the moving labels
        opts = dict(zip(args[1::2], args[2::2]))
        calls.append((json.loads(Path(opts["--pair_json"]).read_text())["id"], opts["--method"], threads))
        moving = nib.load(json.loads(Path(opts["--pair_json"]).read_text())["moving_label"]).get_fdata()
        np.savez(opts["--out"], ddf=np.zeros((2, 64, 64), np.float32), warped=moving.astype(np.int32), seconds=7.0)
        return 0, 1.0, 0.1, ""

    monkeypatch.setattr(bl, "peer_available", lambda name: True)
    monkeypatch.setattr(benchmark, "_spawn", fake_spawn)
    benchmark.run(datalist=str(dl), methods="zero,ants", out=str(out), jobs=2, threads=1, ants_limit=1)
    assert sorted(calls) == [("p0", "ants", 1), ("p0", "zero", 1), ("p1", "zero", 1)]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["pair"], r["method"]) for r in rows] == [("p0", "zero"), ("p0", "ants"), ("p1", "zero")]
    assert rows[0]["speedup_vs_ants"] == "1.0" and rows[2]["speedup_vs_ants"] == ""
    text = (out / "summary.md").read_text()
    assert "first 1 of 2 pairs" in text and "2 registrations ran at a time" in text

    # resume: every registration is already done, nothing is spawned again and the rows are the same
    monkeypatch.setattr(benchmark, "_spawn", lambda *a, **k: pytest.fail("spawned again"))
    benchmark.run(datalist=str(dl), methods="zero,ants", out=str(out), jobs=2, threads=1, ants_limit=1, resume=True)
    again = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["pair"], r["method"], r["dice_mean"]) for r in again] == [
        (r["pair"], r["method"], r["dice_mean"]) for r in rows
    ]


def test_an_explicit_section_applies_to_a_built_in_dataset(tmp_path, monkeypatch):
    # `--dataset brain_1mm --section validation` used to benchmark the test pairs: the dataset's section won
    pairs = {s: [_disc_pair(tmp_path, i, 2.0)] for i, s in enumerate(("test", "validation"))}
    pairs["validation"][0]["id"] = "val0"
    dl = tmp_path / "pairs.json"
    dl.write_text(json.dumps(pairs))
    monkeypatch.setitem(benchmark.DATASETS, "tiny", (dl, "test"))
    for section, expected in ((None, "p0"), ("validation", "val0")):
        out = tmp_path / f"bench_{section}"
        benchmark.run(dataset="tiny", section=section, methods="zero", out=str(out), timeout=600)
        rows = list(csv.DictReader(open(out / "results.csv")))
        assert [r["pair"] for r in rows] == [expected]
        assert f"({section or 'test'} of {dl})" in (out / "summary.md").read_text()
