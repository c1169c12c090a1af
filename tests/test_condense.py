import dataclasses
import json

import numpy as np
import pytest
import torch

from slicenet.cli import main
from slicenet.condense import (
    CompactSettings,
    ValidationFeatures,
    accuracy,
    budget_search,
    build_compact,
    class_centres,
    fit_post,
    frontier,
    lvq21,
    raw_features,
    reduce_bank,
    with_vote,
)
from slicenet.engine import Engine, PostProcessing, quantise_round_trip
from slicenet.errors import InputError
from slicenet.heads import DenseHead, MajorityHead


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


@pytest.fixture(scope="module")
def engine_and_data(run):
    from slicenet.data import load_dataset

    return Engine.load(run / "engine.safetensors"), load_dataset("digits")


@pytest.mark.parametrize("method", ["kmeans", "cnn", "optimised", "lvq", "joint"])
@pytest.mark.parametrize("prototypes", [1, 4])
def test_each_method_keeps_the_requested_count_per_class(engine_and_data, method, prototypes):
    engine, data = engine_and_data
    settings = CompactSettings(method=method, prototypes=prototypes, n_neighbors=1, generations=3)
    compact = build_compact(engine, data.x_train, data.y_train, settings, seed=0)
    counts = np.bincount(compact.head.bank_labels.numpy(), minlength=10)
    assert counts.tolist() == [prototypes] * 10  # never drops a class


def test_lvq21_follows_kohonens_rule():
    # One point between a right prototype (distance 1) and a wrong one (distance 1.2): inside the
    # window (1/1.2 > 0.7/1.3), so the right one steps towards it by rate * (x - r) and the wrong
    # one away by rate * (x - w); a third prototype, not the nearest of either kind, stays put.
    prototypes = np.array([[0.0, 0.0], [2.2, 0.0], [0.0, 5.0]], dtype=np.float32)
    x = np.array([[1.0, 0.0]], dtype=np.float32)
    moved = lvq21(prototypes, np.array([0, 1, 0]), x, np.array([0]), epochs=1, seed=0, rate=0.1)
    np.testing.assert_allclose(moved, [[0.1, 0.0], [2.2 + 0.1 * 1.2, 0.0], [0.0, 5.0]], rtol=1e-6)
    # Far from the border (ratio 1/4 < 0.7/1.3) nothing moves.
    far = lvq21(np.array([[0.0, 0.0], [5.0, 0.0]], dtype=np.float32), np.array([0, 1]), x, np.array([0]),
                epochs=1, seed=0)
    np.testing.assert_array_equal(far, [[0.0, 0.0], [5.0, 0.0]])


def test_lvq_places_prototypes_where_the_classes_meet():
    # Two overlapping Gaussian classes, 2 prototypes each: LVQ2.1 from the k-means start classifies
    # the training points at least as well, and better here, than the k-means centroids.
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal([0, 0], [1.0, 3.0], (400, 2)),
                             rng.normal([1.5, 0], [1.0, 0.3], (400, 2))]).astype(np.float32)
    labels = np.repeat([0, 1], 400)

    def accuracy(bank, bank_labels):
        nearest = ((points[:, None] - bank[None]) ** 2).sum(-1).argmin(1)
        return (bank_labels[nearest] == labels).mean()

    kmeans = reduce_bank(points, labels, 2, CompactSettings(method="kmeans", prototypes=2), seed=0)
    lvq = reduce_bank(points, labels, 2, CompactSettings(method="lvq", prototypes=2, epochs=10), seed=0)
    assert np.bincount(lvq[1]).tolist() == [2, 2]
    assert accuracy(*lvq) > accuracy(*kmeans)


def test_optimise_with_prototypes_writes_a_condensed_run(tmp_path):
    out = tmp_path / "p3"
    assert main(["optimise", "--dataset", "digits", "--generations", "1", "--population-size", "4", "--quiet",
                 "--prototypes", "3", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    engine = Engine.load(out / "engine.safetensors")
    assert np.bincount(engine.head.bank_labels.numpy()).tolist() == [3] * 10
    assert metrics["bank_size"] == 30 and 0 < metrics["test_accuracy"] <= 1 and "full_bank_test_accuracy" in metrics


def test_a_small_class_keeps_all_it_has():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(23, 4)).astype(np.float32)
    labels = np.array([0] * 20 + [1] * 3)
    bank, bank_labels = reduce_bank(points, labels, 2, CompactSettings(method="kmeans", prototypes=5), seed=0)
    assert np.bincount(bank_labels).tolist() == [5, 3]


def test_budget_search_never_returns_an_engine_over_budget(engine_and_data):
    engine, data = engine_and_data
    for budget in (8_000, 20_000):
        compact, chosen, trials = budget_search(engine, data.x_train, data.y_train, budget_bytes=budget, seed=0)
        assert compact.engine_bytes <= budget and chosen["engine_bytes"] <= budget
        assert all(t["engine_bytes"] <= budget for t in trials)
        points = frontier(trials)
        assert [p["engine_bytes"] for p in points] == sorted(p["engine_bytes"] for p in points)
        assert [p["validation_accuracy"] for p in points] == sorted(p["validation_accuracy"] for p in points)
    with pytest.raises(InputError, match="no engine fits"):
        budget_search(engine, data.x_train, data.y_train, budget_bytes=100, seed=0)


def test_validation_features_score_as_the_engine_does(engine_and_data):
    # The budget search scores its engines on trunk features computed once per precision: the same
    # answers as running each engine on the images.
    engine, data = engine_and_data
    scoring = ValidationFeatures(data.x_test, data.y_test)
    base = build_compact(engine, data.x_train, data.y_train,
                         CompactSettings(prototypes=3, dims=16, n_neighbors=1, window=0.2), seed=0)
    for precision in ("fp32", "fp16", "int8"):
        for k, metric in ((1, "cosine"), (3, "euclidean")):
            compact = with_vote(base.with_storage(precision, precision), n_neighbors=k, metric=metric)
            assert scoring.accuracy(compact) == accuracy(compact, data.x_test, data.y_test)
    other = dataclasses.replace(base, weights=[(w * 2, b) for w, b in base.weights])
    with pytest.raises(AssertionError, match="one trunk"):
        scoring.accuracy(other)


def test_a_given_kmeans_start_and_projection_build_the_same_engine(engine_and_data):
    # What the budget search computes once per cell and shares between LVQ windows.
    engine, data = engine_and_data
    settings = CompactSettings(prototypes=4, dims=8, n_neighbors=1, window=0.1)
    raw = raw_features(engine, data.x_train)
    post = fit_post(engine, raw, settings.dims)
    start = class_centres(post(raw).numpy(), data.y_train, engine.n_classes, settings.prototypes, seed=0)
    given = build_compact(engine, data.x_train, data.y_train, settings, seed=0, raw=raw, post=post, start=start)
    built = build_compact(engine, data.x_train, data.y_train, settings, seed=0)
    assert torch.equal(given.bank_head.bank, built.bank_head.bank)
    assert torch.equal(given.post.projection, built.post.projection)


@pytest.mark.parametrize("precision,tolerance", [("fp16", 1e-3), ("int8", 1.0 / 127 + 1e-6)])
def test_round_trips_stay_within_stated_tolerances(precision, tolerance):
    x = torch.randn(50, 16)
    back = quantise_round_trip(x, precision)
    relative = ((back - x).abs().max() / x.abs().max()).item()
    assert relative <= tolerance  # fp16: 2^-11 relative; int8: half a step of max/127 (stated: one step)


def test_storage_round_trip_through_the_file_is_exact(engine_and_data, tmp_path):
    engine, data = engine_and_data
    compact = build_compact(engine, data.x_train, data.y_train,
                            CompactSettings(method="kmeans", prototypes=5, dims=16, precision="int8", n_neighbors=3),
                            seed=0)
    (tmp_path / "e.safetensors").write_bytes(compact.to_bytes())
    again = Engine.load(tmp_path / "e.safetensors")
    assert torch.equal(again.head.bank, compact.head.bank)
    assert torch.equal(again.post.projection, compact.post.projection)
    assert np.array_equal(again.predict(data.x_test)[0], compact.predict(data.x_test)[0])
    assert compact.engine_bytes < engine.engine_bytes / 10


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("target", ["onnx", "jetson", "ncs2", "openvino"])
def test_a_condensed_engine_exports_and_verifies(run, tmp_path, target, metric):
    out = tmp_path / "compact"
    k = "1" if metric == "cosine" else "3"  # 1-NN exports as ArgMax + Gather, k > 1 through TopK
    assert main(["condense", str(run), "--prototypes", "3", "--dims", "16", "--precision", "int8",
                 "--metric", metric, "--n-neighbors", k, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["engine_bytes"] == (out / "engine.safetensors").stat().st_size
    assert metrics["compact"]["metric"] == metric
    assert main(["export", str(out), "--target", target, "--out", str(tmp_path / "export")]) == 0
    from slicenet.export import bundle_name

    bundle = tmp_path / "export" / bundle_name(out) / target
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert all(v["agreement"] == 1.0 for v in manifest["verification"] if v["precision"] == "fp32")
    if target == "onnx":  # cosine ranking needs no query normalisation: no Sqrt in the graph
        import onnx

        ops = {n.op_type for n in onnx.load(str(bundle / "engine.onnx")).graph.node}
        assert ("Sqrt" in ops) == (metric == "euclidean")
        assert ("TopK" in ops) == (k != "1")
    assert main(["evaluate", str(out), "--json"]) == 0


def test_budget_cli_prints_the_frontier(run, tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["condense", str(run), "--budget-kb", "12", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["engine_bytes"] <= 12_000 and metrics["frontier"]
    assert "frontier" in capsys.readouterr().out


def test_a_killed_budget_search_continues_to_the_same_engine(run, tmp_path, monkeypatch, capsys):
    import slicenet.condense as core

    flags = ["condense", str(run), "--budget-kb", "5", "--metric", "cosine"]
    assert main([*flags, "--out", str(tmp_path / "whole")]) == 0
    cells, real = set(), core.shared_fit

    def killed_at_the_fourth_cell(*args, **kwargs):
        cells.add((kwargs["prototypes"], kwargs["dims"]))  # once per fit split, for all of a cell's windows
        if len(cells) > 3:
            raise KeyboardInterrupt  # as Ctrl-C; a SIGKILL leaves the same checkpoint, written after each cell
        return real(*args, **kwargs)

    out = tmp_path / "killed"
    monkeypatch.setattr(core, "shared_fit", killed_at_the_fourth_cell)
    assert main([*flags, "--out", str(out)]) == 130
    checkpoint = json.loads((out / "grid-checkpoint.json").read_text())
    assert len(checkpoint["cells"]) == 3 and not (out / "metrics.json").exists()
    assert "rerun the same command to continue" in capsys.readouterr().err
    monkeypatch.setattr(core, "shared_fit", real)
    assert main(["condense", str(run), "--budget-kb", "5", "--out", str(out)]) == 2  # other settings: refused
    assert "unfinished budget search of other settings" in capsys.readouterr().err
    assert json.loads((out / "grid-checkpoint.json").read_text()) == checkpoint  # and kept
    assert main([*flags, "--out", str(out)]) == 0
    assert "3 cells of its grid were scored before" in capsys.readouterr().err
    assert (out / "engine.safetensors").read_bytes() == (tmp_path / "whole" / "engine.safetensors").read_bytes()
    whole, continued = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "whole", out))
    assert continued["frontier"] == whole["frontier"] and continued["trials"] == whole["trials"]
    assert not (out / "grid-checkpoint.json").exists()


@pytest.mark.parametrize("flags,message", [
    (["--prototypes", "0"], "--prototypes must be at least 1"),
    (["--prototypes", "2", "--method", "svd"], "unknown reduction method"),
    (["--prototypes", "2", "--metric", "hamming"], "expected cosine or euclidean"),
    (["--prototypes", "2", "--epochs", "0"], "--epochs must be at least 1"),
    (["--prototypes", "2", "--bank-shifts", "-2"], "--bank-shifts must be -1 (as the source run) or between 0"),
    (["--prototypes", "2", "--bank-shifts", "9"], "--bank-shifts must be -1 (as the source run) or between 0 and 4"),
    (["--prototypes", "2", "--window", "1.5"], "--window must be"),
    (["--prototypes", "2", "--budget-macs", "1000"], "give --budget-kb too"),
    (["--budget-kb", "20", "--budget-macs", "0"], "--budget-macs must be a positive"),
    (["--budget-kb", "nan"], "--budget-kb (config key budget_kb): expected a finite number, got nan"),
    (["--prototypes", "2", "--splits", "3"], "give --budget-kb too"),
    (["--budget-kb", "6", "--splits", "-1"], "--splits must be 0 (auto) or at least 1"),
    (["--budget-kb", "0.01"], "no engine fits in 10 bytes (the trunk alone needs"),  # before the grid starts
    (["--prototypes", "2", "--query-shifts", "5"], "--query-shifts must be between 0 and 4 pixels"),
    (["--prototypes", "2", "--method", "joint", "--query-shifts", "1"], "for one view per query"),
    (["--prototypes", "2", "--dims", "100000"], "give at most"),  # was recorded as dims 100000 and ignored
    (["--prototypes", "100000"], "keeps every image of every class"),  # nothing condensed
])
def test_condense_refuses_bad_flags(run, capsys, flags, message):
    assert main(["condense", str(run), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_the_report_names_a_condensed_engine_by_its_own_k(run, tmp_path):
    out = tmp_path / "p2"
    assert main(["condense", str(run), "--prototypes", "2", "--n-neighbors", "1", "--out", str(out)]) == 0
    assert main(["report", str(run), str(out), "--out", str(tmp_path / "results")]) == 0
    text = (tmp_path / "results" / "REPORT.md").read_text()
    assert "| k-NN (k=1), CMA, compact: lvq 2/class, dims all, fp32" in text  # not the search's k=9
    assert "| k-NN (k=9), CMA | digits |" in text


def test_prototypes_can_fit_a_shifted_bank(engine_and_data, run, tmp_path):
    from slicenet.condense import choose_and_build

    engine, data = engine_and_data
    # More prototypes than images: the bank is every fitted point, the images and 4 shifted copies each.
    compact, _, _ = choose_and_build(engine, data.x_train, data.y_train,
                                     CompactSettings(method="kmeans", prototypes=10_000), seed=0, shifts=1)
    assert len(compact.head.bank) == 5 * len(data.x_train)
    out = tmp_path / "shifted"
    assert main(["condense", str(run), "--prototypes", "3", "--bank-shifts", "1", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["compact"]["bank_shifts"] == 1 and metrics["bank_size"] == 30


def test_the_lvq_window_decides_which_borders_move():
    # d_r = 1, d_w = 1.5: min ratio 0.67 lies inside a 0.3 window (above 0.7 / 1.3 = 0.54) and outside
    # a 0.1 window (below 0.9 / 1.1 = 0.82).
    prototypes = np.array([[0.0, 0.0], [2.5, 0.0]], dtype=np.float32)
    x, y = np.array([[1.0, 0.0]], dtype=np.float32), np.array([0])
    wide = lvq21(prototypes, np.array([0, 1]), x, y, epochs=1, seed=0, rate=0.1, window=0.3)
    narrow = lvq21(prototypes, np.array([0, 1]), x, y, epochs=1, seed=0, rate=0.1, window=0.1)
    np.testing.assert_allclose(wide, [[0.1, 0.0], [2.65, 0.0]], rtol=1e-6)
    np.testing.assert_array_equal(narrow, prototypes)


def test_the_lvq_window_is_chosen_by_validation_unless_given(engine_and_data):
    from slicenet.condense import LVQ_WINDOWS, choose_and_build

    engine, data = engine_and_data
    _, _, chosen = choose_and_build(engine, data.x_train, data.y_train,
                                    CompactSettings(method="lvq", prototypes=2, n_neighbors=1), seed=0)
    assert chosen.window in LVQ_WINDOWS
    _, _, given = choose_and_build(engine, data.x_train, data.y_train,
                                   CompactSettings(method="lvq", prototypes=2, n_neighbors=1, window=0.25), seed=0)
    assert given.window == 0.25


def test_budget_search_keeps_within_a_multiply_add_budget(engine_and_data):
    engine, data = engine_and_data
    trunk = engine.spec.multiply_adds(engine.image_size)
    # Room for a projection to 8 dimensions and 2 prototypes per class there, or fewer.
    budget = trunk + engine.spec.n_features(engine.image_size) * 8 + 10 * 2 * 8
    compact, chosen, trials = budget_search(engine, data.x_train, data.y_train, budget_bytes=50_000, seed=0,
                                            budget_macs=budget)
    assert compact.multiply_adds <= budget and all(t["multiply_adds"] <= budget for t in trials)
    assert {t["window"] for t in trials} == {0.1, 0.2, 0.3}
    with pytest.raises(InputError, match="multiply-adds"):
        budget_search(engine, data.x_train, data.y_train, budget_bytes=50_000, seed=0, budget_macs=trunk)


def test_multiply_adds_count_the_convolutions_and_the_head():
    from slicenet.trunk import LayerSpec, TrunkSpec, init_weights

    # conv 1->4 5x5 on 28x28: 24 x 24 x 4 x 25 = 57,600; pool; conv 4->8 5x5 on 12x12: 8 x 8 x 8 x 100
    # = 51,200; pool to 8 x 4 x 4 = 128 features.
    spec = TrunkSpec((LayerSpec(4, 5, pool=2), LayerSpec(8, 5, pool=2)))
    assert spec.multiply_adds((28, 28)) == 108_800
    weights = init_weights(spec, 0)
    dense = Engine(spec, weights, 0.0, 1.0, PostProcessing("none"),
                   DenseHead([(torch.zeros(128, 128), torch.zeros(128)), (torch.zeros(10, 128), torch.zeros(10))]),
                   tuple("0123456789"), (28, 28))
    assert dense.multiply_adds == 108_800 + 128 * 128 + 128 * 10
    images = np.zeros((30, 28, 28), dtype=np.uint8)
    knn = Engine.build(spec, weights, images, np.arange(30) % 10, input_mean=0.0, input_std=1.0,
                       head=MajorityHead(n_neighbors=1, metric="cosine"), class_names=tuple("0123456789"))
    assert knn.multiply_adds == 108_800 + 30 * 128  # one product per prototype and feature
    projected = dataclasses.replace(knn, post=PostProcessing("centre_l2", knn.post.mean, torch.zeros(128, 16)),
                                    head=dataclasses.replace(knn.head, bank=torch.zeros(30, 16)))
    assert projected.multiply_adds == 108_800 + 128 * 16 + 30 * 16


def test_lvq_keeps_prototypes_on_the_sphere_of_normalised_features(engine_and_data):
    engine, data = engine_and_data
    compact = build_compact(engine, data.x_train, data.y_train,
                            CompactSettings(method="lvq", prototypes=3, n_neighbors=1), seed=0)
    np.testing.assert_allclose(compact.head.bank.norm(dim=1).numpy(), 1.0, atol=1e-5)
    # On the sphere euclidean and cosine distances rank the prototypes alike.
    euclidean, _, _ = with_vote(compact, n_neighbors=1, metric="euclidean").predict(data.x_test)
    cosine, _, _ = with_vote(compact, n_neighbors=1, metric="cosine").predict(data.x_test)
    assert (euclidean == cosine).mean() > 0.99


def test_budget_search_can_rank_by_the_mean_of_several_splits(engine_and_data):
    engine, data = engine_and_data
    compact, chosen, trials = budget_search(engine, data.x_train, data.y_train, budget_bytes=6_000, seed=0,
                                            method="kmeans", splits=2)
    assert compact.engine_bytes <= 6_000 and trials
    for trial in trials:
        assert len(trial["validation_splits"]) == 2
        assert trial["validation_accuracy"] == pytest.approx(np.mean(trial["validation_splits"]))
    # The smallest engine within one standard error of the best validation accuracy (condense.pick_within_noise).
    best = max(t["validation_accuracy"] for t in trials)
    assert chosen["best_validation_accuracy"] == best and chosen["validation_accuracy"] >= best - chosen[
        "validation_noise"]
    assert chosen["engine_bytes"] == min(t["engine_bytes"] for t in trials
                                         if t["validation_accuracy"] >= best - chosen["validation_noise"])


def test_joint_tunes_the_last_layer_only_where_it_pays(engine_and_data):
    """joint moves only the trunk's last layer, keeps the bank's shape and labels, never scores its
    training images worse than the LVQ engine it starts from, and survives choose_and_build's
    validation only when it beats LVQ there."""
    from slicenet.condense import choose_and_build, tune_jointly

    engine, data = engine_and_data
    images, labels = data.x_train, data.y_train
    start = build_compact(engine, images, labels,
                          CompactSettings(method="lvq", prototypes=3, n_neighbors=1, window=0.3), seed=0)
    tuned = tune_jointly(start, images, labels,
                         CompactSettings(method="joint", prototypes=3, n_neighbors=1, generations=5, window=0.3),
                         seed=0)
    for (w0, b0), (w1, b1) in zip(start.weights[:-1], tuned.weights[:-1], strict=True):
        assert torch.equal(w0, w1) and torch.equal(b0, b1)  # earlier layers untouched
    assert tuned.head.bank.shape == start.head.bank.shape
    assert torch.equal(tuned.head.bank_labels, start.head.bank_labels)

    def train_accuracy(e):
        return (e.predict(images)[0] == labels).mean()

    assert train_accuracy(tuned) >= train_accuracy(start)
    settings = CompactSettings(method="joint", prototypes=3, n_neighbors=1, generations=5, window=0.3)
    compact, val_accuracy, chosen = choose_and_build(engine, images, labels, settings, seed=0)
    assert chosen.method in ("lvq", "joint")
    lvq_only = choose_and_build(engine, images, labels, dataclasses.replace(settings, method="lvq"), seed=0)[1]
    assert val_accuracy >= lvq_only and (chosen.method == "lvq") == (val_accuracy == lvq_only)


def test_joint_needs_a_convolution():
    from slicenet.condense import tune_jointly
    from slicenet.data import load_dataset
    from slicenet.trunk import TrunkSpec

    data = load_dataset("digits")
    pixels = Engine.build(TrunkSpec(()), [], data.x_train[:50], data.y_train[:50], input_mean=0.3, input_std=0.4,
                          head=MajorityHead(n_neighbors=1), class_names=data.class_names)
    with pytest.raises(InputError, match="last convolution"):
        tune_jointly(pixels, data.x_train[:50], data.y_train[:50], CompactSettings(method="joint", prototypes=1),
                     seed=0)


def test_condense_joint_refuses_a_trunk_without_convolutions(tmp_path, capsys):
    pixels = tmp_path / "pixels"
    assert main(["optimise", "--dataset", "digits", "--preset", "pixels", "--postprocessing", "none", "--quiet",
                 "--out", str(pixels)]) == 0
    assert main(["condense", str(pixels), "--prototypes", "2", "--method", "joint"]) == 2
    assert "--method joint tunes the trunk's last convolution" in capsys.readouterr().err
    assert not (tmp_path / "pixels-p2").exists()


def test_budget_search_with_joint_tunes_only_its_pick(engine_and_data):
    engine, data = engine_and_data
    compact, chosen, trials = budget_search(engine, data.x_train, data.y_train, budget_bytes=20_000, seed=0,
                                            method="joint", generations=3)
    assert all(t["method"] == "lvq" for t in trials)  # the grid is searched with LVQ
    assert compact.engine_bytes <= 20_000
    if chosen["method"] == "joint":
        assert chosen["validation_accuracy"] > chosen["lvq_validation_accuracy"]
    else:
        assert chosen["method"] == "lvq" and {k: v for k, v in chosen.items() if k in trials[0]} in trials


def test_a_compact_engine_can_vote_its_querys_shifted_views(engine_and_data, run, tmp_path):
    # --query-shifts 1: each query and its four 1-px shifted copies vote over the compact bank; the
    # votes are the sum of each view's own vote, the multiply-adds five times the single view's, the
    # bytes those of the same bank, and the budget search scores its engines so.
    from slicenet.condense import choose_and_build

    engine, data = engine_and_data
    settings = CompactSettings(prototypes=3, dims=16, n_neighbors=1, metric="cosine", window=0.2)
    single = build_compact(engine, data.x_train, data.y_train, settings, seed=0)
    views = build_compact(engine, data.x_train, data.y_train, dataclasses.replace(settings, query_shifts=1), seed=0)
    assert views.n_views == 5 and views.multiply_adds == 5 * single.multiply_adds
    assert torch.equal(views.bank_head.bank, single.bank_head.bank)
    assert abs(views.engine_bytes - single.engine_bytes) < 8  # the header's "query_shifts": 1 against 0
    images = data.x_test[:50]
    shifted = views.views.expand(images)  # the query, then its copies (the views' own test: test_engine.py)
    expected = sum(single.predict(shifted[v * len(images):(v + 1) * len(images)])[1] for v in range(5))
    np.testing.assert_array_equal(views.predict(images)[1], expected)
    scoring = ValidationFeatures(data.x_test, data.y_test)
    assert scoring.accuracy(views) == accuracy(views, data.x_test, data.y_test)
    assert scoring.accuracy(single) == accuracy(single, data.x_test, data.y_test)
    _, _, chosen = choose_and_build(engine, data.x_train, data.y_train, dataclasses.replace(settings, query_shifts=1),
                                    seed=0)
    assert chosen.query_shifts == 1
    compact, best, trials = budget_search(engine, data.x_train, data.y_train, budget_bytes=8_000, seed=0,
                                          query_shifts=1)
    assert compact.n_views == 5 and best["query_shifts"] == 1 and all(t["query_shifts"] == 1 for t in trials)
    assert all(t["multiply_adds"] >= 5 * engine.spec.multiply_adds(engine.image_size) for t in trials)
    out = tmp_path / "views"
    assert main(["condense", str(run), "--prototypes", "3", "--dims", "16", "--precision", "int8", "--metric",
                 "cosine", "--n-neighbors", "1", "--query-shifts", "1", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["query_shifts"] == 1 and metrics["compact"]["query_shifts"] == 1
    for target in ("jetson", "ncs2"):
        assert main(["export", str(out), "--target", target, "--out", str(tmp_path / "export")]) == 0
    assert main(["report", str(out), "--out", str(tmp_path / "results")]) == 0
    assert "| k-NN (k=1, 5 views), CMA, compact: lvq 3/class, dims 16, int8, cosine" in (
        tmp_path / "results" / "REPORT.md").read_text()
