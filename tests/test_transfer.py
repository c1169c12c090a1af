"""Transfer (each --tune mode, both GAs' operators and ranges) and enrolment (new classes as
prototypes) on digits, with their one-line errors."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from slicenet.cli import main
from slicenet.data import load_dataset
from slicenet.engine import Engine
from slicenet.heads import LocalMeanHead
from slicenet.transfer import (
    K_CHOICES,
    MASK_FLIP,
    SIGMA_RANGE,
    depth_genome,
    depth_next,
    depth_run,
    mask_next,
    mask_run,
    mask_units,
    parse_tune,
)
from slicenet.trunk import resolve_preset


def engine_of(run):
    return Engine.load(run / "engine.safetensors")


def same_weights(a, b, layer):
    return all(torch.equal(x, y) for x, y in zip(a.weights[layer], b.weights[layer], strict=True))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A short digits run on 16x16 images (two layers), the source of every transfer here."""
    out = tmp_path_factory.mktemp("source") / "digits16"
    assert main(["optimise", "--dataset", "digits@16", "--generations", "2", "4", "--population-size", "6",
                 "--quiet", "--out", str(out)]) == 0
    return out


def transfer(source, out, *flags):
    return main(["transfer", str(source), "--dataset", "digits", "--generations", "2", "3", "--search-images", "200",
                 "--quiet", "--out", str(out), *flags])


def test_tune_none_keeps_every_layer_and_rebuilds_the_bank(source, tmp_path):
    assert transfer(source, tmp_path / "none", "--tune", "none") == 0
    a, b = engine_of(source), engine_of(tmp_path / "none")
    assert same_weights(a, b, 0) and same_weights(a, b, 1) and b.image_size == (16, 16)
    metrics = json.loads((tmp_path / "none" / "metrics.json").read_text())
    assert metrics["evaluations"] == 0 and metrics["transfer"]["tune"] == "none"
    # the source's trunk as it was: the "random init" column of a transfer is its starting point
    assert metrics["random_init_test_accuracy"] == metrics["test_accuracy"]


def test_a_transfer_votes_as_its_source_unless_told(source, tmp_path):
    from slicenet.transfer import TransferConfig

    # The vote comes from the source's engine file, which every run has (an enrolled run's metrics.json
    # records no vote setting, only its engine's head).
    local = tmp_path / "local-mean-source"
    shutil.copytree(source, local)
    engine = engine_of(source)
    head = LocalMeanHead(n_neighbors=3, metric="euclidean").fit(engine.head.bank, engine.head.bank_labels,
                                                                engine.n_classes)
    (local / "engine.safetensors").write_bytes(engine.with_head(head).to_bytes())
    assert TransferConfig().run_config(source, size=16, tune="none").vote == "majority"
    assert TransferConfig().run_config(local, size=16, tune="none").vote == "local-mean"  # a radu run stays one
    assert TransferConfig(vote="majority").run_config(local, size=16, tune="none").vote == "majority"


def test_tune_a_layer_searches_only_that_layer(source, tmp_path):
    assert transfer(source, tmp_path / "one", "--tune", "1") == 0
    a, b = engine_of(source), engine_of(tmp_path / "one")
    assert same_weights(a, b, 0)
    history = (tmp_path / "one" / "history.csv").read_text().splitlines()
    layers = {line.split(",")[1] for line in history[1:]}
    assert layers == {"2"}  # the search's rows name layer 2 (1-based) only


def test_tune_filters_searches_only_those_filters(source, tmp_path):
    assert transfer(source, tmp_path / "f", "--tune", "0.1", "--granularity", "filter") == 0
    a, b = engine_of(source), engine_of(tmp_path / "f")
    assert same_weights(a, b, 1)
    untouched = [f for f in range(a.weights[0][0].shape[0]) if f != 1]
    assert torch.equal(a.weights[0][0][untouched], b.weights[0][0][untouched])


def test_tune_all_searches_every_layer_from_the_source_weights(source, tmp_path):
    assert transfer(source, tmp_path / "all", "--tune", "all") == 0
    history = (tmp_path / "all" / "history.csv").read_text().splitlines()
    assert {line.split(",")[1] for line in history[1:]} == {"1", "2"}


def test_images_are_resized_to_the_sources_input(source, tmp_path):
    assert transfer(source, tmp_path / "r", "--tune", "none") == 0
    config = (tmp_path / "r" / "config.toml").read_text()
    assert 'dataset = "digits@16"' in config
    assert load_dataset("digits@16").x_train.shape[1:] == (16, 16)
    assert main(["evaluate", str(tmp_path / "r")]) == 0  # evaluate reads the same resized images


def test_the_mask_ga_keeps_its_length_top_half_and_flip_rate():
    rng = np.random.default_rng(0)
    population = [rng.integers(0, 2, 40) for _ in range(10)]
    fitness = np.arange(10, dtype=float)
    children = mask_next(population, fitness, rng)
    assert len(children) == 10 and all(len(c) == 40 for c in children)
    top = [population[i] for i in range(9, 4, -1)]
    assert all(np.array_equal(c, p) for c, p in zip(children[:5], top, strict=True))  # the top half survives as is
    # flips: children of identical parents differ from them only by mutation
    same = [np.zeros(400, dtype=np.int64)] * 4
    flipped = np.mean([mask_next(same, np.zeros(4), rng)[2:] for _ in range(200)])
    assert abs(flipped - MASK_FLIP) < 0.005


def test_the_depth_ga_keeps_every_gene_in_its_range():
    rng = np.random.default_rng(1)
    population = [depth_genome(rng, 4) for _ in range(8)]
    for _ in range(30):
        population = depth_next(population, rng.random(8), rng, 4)
        for genome in population:
            assert 1 <= genome["kept"] <= 4 and 0 <= genome["retuned"] <= genome["kept"]
            assert SIGMA_RANGE[0] <= genome["sigma"] <= SIGMA_RANGE[1] and genome["k"] in K_CHOICES


def test_tournament_of_two_picks_the_fitter():
    rng = np.random.default_rng(2)
    population = [{"kept": 1, "retuned": 0, "sigma": 0.5, "k": 9}, {"kept": 2, "retuned": 2, "sigma": 0.5, "k": 9}]
    # with one much fitter individual, most children carry its genes
    children = [c for _ in range(100) for c in depth_next(population, np.array([0.0, 1.0]), rng, 2)]
    assert np.mean([c["kept"] == 2 for c in children]) > 0.6


def test_genomes_become_run_settings():
    _, spec = resolve_preset("default", (28, 28))
    assert depth_run({"kept": 1, "retuned": 1, "sigma": 0.3, "k": 5}, spec)["tune"] == "0,1"
    assert depth_run({"kept": 2, "retuned": 0, "sigma": 0.3, "k": 5}, spec)["tune"] == "none"
    units = mask_units(spec)  # fewer than 8 layers: one bit per filter
    assert len(units) == sum(layer.out_channels for layer in spec.layers)
    bits = np.zeros(len(units), dtype=np.int64)
    bits[[0, len(units) - 1]] = 1
    assert mask_run(bits, spec)["tune"] == f"0.0,1.{spec.layers[1].out_channels - 1}"
    assert parse_tune("0.3,1", spec, "filter") == [(0, 3), (1, None)]


def test_the_ga_picks_a_set_and_every_individual_is_a_run(source, tmp_path):
    for mode in ("mask", "depth"):
        out = tmp_path / mode
        assert transfer(source, out, "--tune", "ga", "--ga", mode, "--ga-population", "2", "--ga-generations",
                        "1") == 0
        state = json.loads((out / "ga.json").read_text())
        assert len(state["history"]) == 2
        for individual in state["evaluated"].values():
            assert (out / "individuals").exists() and engine_of(type(out)(individual["run"])) is not None
    # the same command again keeps every individual's run; other settings in the same --out never take them
    assert transfer(source, tmp_path / "depth", "--tune", "ga", "--ga", "depth", "--ga-population", "2",
                    "--ga-generations", "1") == 0
    assert json.loads((tmp_path / "depth" / "ga.json").read_text()) == state
    assert main(["transfer", str(source), "--dataset", "digits", "--generations", "3", "3", "--search-images", "200",
                 "--quiet", "--out", str(tmp_path / "depth"), "--tune", "ga", "--ga", "depth", "--ga-population", "2",
                 "--ga-generations", "1"]) == 2


@pytest.mark.parametrize(("flags", "match"), [
    (["--tune", "5"], "layer 5 does not exist"),
    (["--tune", "x"], "expected all, none, layers like 0,1"),
    (["--ga", "bits"], "expected mask or depth"),
])
def test_bad_transfer_flags_are_one_line(source, tmp_path, flags, match):
    result = subprocess.run([sys.executable, "-m", "slicenet.cli", "transfer", str(source), "--dataset", "digits",
                             *flags, "--out", str(tmp_path / "t")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert match in result.stderr and not (tmp_path / "t").exists()


def test_a_source_that_is_not_a_run_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "slicenet.cli", "transfer", str(tmp_path), "--dataset", "digits",
                             "--out", str(tmp_path / "t")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "not a finished slicenet run" in result.stderr
    assert not (tmp_path / "t").exists()


def test_init_from_with_images_of_another_size_is_one_line(source, tmp_path):
    result = subprocess.run([sys.executable, "-m", "slicenet.cli", "optimise", "--dataset", "digits", "--init-from",
                             str(source), "--out", str(tmp_path / "t")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "add @16 to the dataset" in result.stderr, result.stderr
    assert not (tmp_path / "t").exists()


# -- enrolment --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def five(tmp_path_factory):
    """A digits run of classes 0-4 only."""
    out = tmp_path_factory.mktemp("five") / "d04"
    assert main(["optimise", "--dataset", "digits#0-4", "--generations", "2", "3", "--population-size", "6",
                 "--quiet", "--out", str(out)]) == 0
    return out


def write_folder(root, classes):
    data = load_dataset("digits")
    for name in classes:
        (root / name).mkdir(parents=True)
        for i, image in enumerate(data.x_train[data.y_train == int(name)][:6]):
            Image.fromarray(image).save(root / name / f"{i}.png")
    return root


def test_enrol_adds_classes_and_keeps_the_old_ones(five, tmp_path):
    folder = write_folder(tmp_path / "new", ["5", "6"])
    assert main(["enrol", str(five), "--dataset", f"folder:{folder}", "--per-class", "4", "--out",
                 str(tmp_path / "e")]) == 0
    old, new = engine_of(five), engine_of(tmp_path / "e")
    assert new.class_names == ("0", "1", "2", "3", "4", "5", "6")
    n = old.bank_head.bank.shape[0]
    assert torch.equal(new.bank_head.bank[:n], old.bank_head.bank) and new.bank_head.bank.shape[0] == n + 8
    assert torch.equal(new.bank_head.bank_labels[n:], torch.tensor([5] * 4 + [6] * 4))
    data = load_dataset("digits#0-4")
    before, after = old.predict(data.x_test)[0], new.predict(data.x_test)[0]
    assert np.mean(before == after) > 0.95  # a few old-class images may now find a new class nearer
    # the enrolled images themselves are recognised (1-NN on its own prototypes)
    assert main(["enrol", str(five), "--dataset", f"folder:{folder}", "--n-neighbors", "1", "--out",
                 str(tmp_path / "e1")]) == 0
    images = np.stack([np.asarray(Image.open(p)) for p in sorted((folder / "6").iterdir())])
    assert (engine_of(tmp_path / "e1").predict(images)[0] == 6).all()


def test_enrol_more_prototypes_of_an_existing_class(five, tmp_path):
    folder = write_folder(tmp_path / "more", ["3"])
    assert main(["enrol", str(five), "--dataset", f"folder:{folder}", "--out", str(tmp_path / "e")]) == 0
    new = engine_of(tmp_path / "e")
    assert new.class_names == ("0", "1", "2", "3", "4")
    assert int((new.bank_head.bank_labels == 3).sum()) == int((engine_of(five).bank_head.bank_labels == 3).sum()) + 6


def test_a_compact_engine_enrols_through_its_reduction_again_and_again(five, tmp_path):
    # A condensed engine keeps 3 prototypes per class: every enrolled class is reduced to 3, and so is a
    # class enrolled into the enrolled engine (its run still says how its bank was reduced).
    assert main(["condense", str(five), "--prototypes", "3", "--n-neighbors", "1", "--metric", "cosine",
                 "--out", str(tmp_path / "c")]) == 0
    assert main(["enrol", str(tmp_path / "c"), "--dataset", f"folder:{write_folder(tmp_path / 'a', ['5'])}",
                 "--out", str(tmp_path / "e")]) == 0
    assert main(["enrol", str(tmp_path / "e"), "--dataset", f"folder:{write_folder(tmp_path / 'b', ['6'])}",
                 "--out", str(tmp_path / "e2")]) == 0
    counts = torch.bincount(engine_of(tmp_path / "e2").bank_head.bank_labels).tolist()
    assert counts == [3] * 7
    metrics = json.loads((tmp_path / "e2" / "metrics.json").read_text())
    assert metrics["kind"] == "compact" and metrics["compact"]["prototypes"] == 3
    # the report tables the condensed engine beside its full bank, and the enrolled ones as enrolments
    assert main(["report", str(tmp_path / "c"), str(tmp_path / "e2"), "--out", str(tmp_path / "r")]) == 0
    report = (tmp_path / "r" / "REPORT.md").read_text()
    compact = report.split("## Compact engines")[1].split("\n## ")[0]
    assert "--out " + str(tmp_path / "c") in compact and "e2" not in compact
    assert "6 (3)" in report.split("## Enrolment")[1]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "slicenet.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_bad_enrolment_input_is_one_line_and_writes_nothing(five, tmp_path, run_main):
    empty = tmp_path / "empty"
    (empty / "7").mkdir(parents=True)
    existing = write_folder(tmp_path / "existing", ["2"])
    cases = [
        (["--dataset", f"folder:{empty}"], "has 0 PNG/JPEG image"),
        (["--dataset", f"folder:{existing}", "--new-only"], "class 2 already exists"),
        (["--dataset", f"folder:{tmp_path / 'nowhere'}"], "is not a directory"),
        (["--dataset", f"folder:{existing}", "--per-class", "-1"], "--per-class must be"),
        (["--dataset", f"folder:{existing}", "--bank-shifts", "9"], "--bank-shifts must be -1"),  # was a traceback
    ]
    for flags, match in cases:
        status, err = run_main(["enrol", str(five), *flags, "--out", str(tmp_path / "out")])
        assert status == 2 and len(err.strip().splitlines()) == 1, err
        assert match in err and not (tmp_path / "out").exists()
    status, err = run_main(["enrol", str(tmp_path), "--dataset", f"folder:{existing}", "--out", str(tmp_path / "out")])
    assert status == 2 and "not a finished slicenet run" in err


def test_the_report_tables_transfers_and_enrolments(source, five, tmp_path):
    assert transfer(source, tmp_path / "none", "--tune", "none") == 0
    assert transfer(source, tmp_path / "ga", "--tune", "ga", "--ga-population", "2", "--ga-generations", "0") == 0
    state = json.loads((tmp_path / "ga" / "ga.json").read_text())
    best = max(state["evaluated"].values(), key=lambda e: e["validation_accuracy"])["run"]
    folder = write_folder(tmp_path / "new", ["5", "6"])
    assert main(["enrol", str(five), "--dataset", f"folder:{folder}", "--per-class", "2", "--evaluate-on",
                 "digits#0-6", "--out", str(tmp_path / "e")]) == 0
    enrolled = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert enrolled["n_test"] == len(load_dataset("digits#0-6").y_test)
    assert main(["report", str(tmp_path / "none"), best, str(tmp_path / "e"), "--out", str(tmp_path / "r")]) == 0
    report = (tmp_path / "r" / "REPORT.md").read_text()
    assert "## Transfer" in report and "random selection (mask genomes, 2 transfers)" in report
    assert "## Enrolment" in report and "5 (2), 6 (2)" in report


def test_backprop_fine_tunes_the_same_source_trunk_with_frozen_layers(source, tmp_path):
    assert main(["baseline", "--dataset", "digits", "--from", str(source), "--freeze", "0", "--epochs", "1",
                 "--head", "knn", "--quiet", "--out", str(tmp_path / "b")]) == 0
    a, b = engine_of(source), engine_of(tmp_path / "b")
    assert same_weights(a, b, 0) and not same_weights(a, b, 1)
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["transfer"]["tune"] == "backprop, frozen: 0" and metrics["dataset"] == "digits@16"
    result = cli("baseline", "--dataset", "digits", "--init-from", source, "--freeze", "7", "--out", tmp_path / "x")
    assert result.returncode == 2 and "layer 7 does not exist" in result.stderr and not (tmp_path / "x").exists()


def test_an_enrollable_bundle_enrols_on_the_host_as_slicenet_enrol_does(five, tmp_path):
    assert main(["export", str(five), "--target", "onnx", "--enrollable", "--out", str(tmp_path / "x")]) == 0
    bundle = next((tmp_path / "x").glob("*/onnx"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["enrollable"]["model"] == "trunk.onnx"
    readme = (bundle / "README.md").read_text()
    assert "run_engine.py enrol . NEW_CLASSES_DIR" in readme and "--distance stick" not in readme
    assert any(v["runtime"] == "onnxruntime+numpy-knn" and v["agreement"] == 1.0 for v in manifest["verification"])
    folder = write_folder(tmp_path / "new", ["5", "6"])
    result = subprocess.run([sys.executable, str(bundle / "run_engine.py"), "enrol", str(bundle), str(folder),
                             "--per-class", "4"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert main(["enrol", str(five), "--dataset", f"folder:{folder}", "--per-class", "4", "--out",
                 str(tmp_path / "e")]) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    enrolled = engine_of(tmp_path / "e")
    bank = np.load(bundle / manifest["enrollable"]["bank"])
    assert manifest["class_names"] == list(enrolled.class_names) and not (bundle / "bank-0.npy").exists()
    assert np.allclose(bank, enrolled.bank_head.bank.numpy(), atol=1e-5)
    assert np.array_equal(np.load(bundle / manifest["enrollable"]["bank_labels"]), enrolled.bank_head.bank_labels)
    # run classifies into the enrolled classes, and its samples still match (sha256 sums updated too)
    result = subprocess.run([sys.executable, str(bundle / "run_engine.py"), "run", "--bundle", str(bundle),
                             "--runtime", "onnxruntime", "--warmup", "1", "--iterations", "3", "--out",
                             str(tmp_path / "r.json")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "r.json").read_text())["runtime"] == "onnxruntime+numpy-knn"
    images = np.stack([np.asarray(Image.open(p)) for p in sorted((folder / "6").iterdir())])
    from slicenet.boards import run_engine

    embed = run_engine.make_embed(str(bundle), manifest, "onnxruntime", "CPU")
    labels = np.load(bundle / manifest["enrollable"]["bank_labels"])
    board = run_engine.classify(run_engine.embed_all(embed, images, 1), bank, labels, 7, 9, "euclidean", "majority")
    assert board == enrolled.predict(images)[0].tolist()


def runner(bundle, *args):
    return subprocess.run([sys.executable, str(bundle / "run_engine.py"), *map(str, args)], capture_output=True,
                          text=True, timeout=180)


def test_a_compact_bundle_enrols_on_the_board_up_to_its_prototypes_per_class(five, tmp_path):
    # The board has no k-means: up to the compact bank's 3 per class it adds images as slicenet enrol does,
    # and refuses more (one line, exit 2, the bundle as it was).
    assert main(["condense", str(five), "--prototypes", "3", "--n-neighbors", "1", "--metric", "cosine",
                 "--out", str(tmp_path / "c")]) == 0
    assert main(["export", str(tmp_path / "c"), "--target", "onnx", "--enrollable", "--out", str(tmp_path / "x")]) == 0
    bundle = next((tmp_path / "x").glob("*/onnx"))
    before = (bundle / "manifest.json").read_text()
    assert json.loads(before)["enrollable"]["prototypes_per_class"] == 3
    folder = write_folder(tmp_path / "new", ["5", "6"])
    board = [sys.executable, str(bundle / "run_engine.py"), "enrol", str(bundle), str(folder)]
    result = subprocess.run(board, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "keeps 3 prototypes per class" in result.stderr and "at most 3 images per class" in result.stderr
    assert (bundle / "manifest.json").read_text() == before
    result = subprocess.run([*board, "--per-class", "3"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert main(["enrol", str(tmp_path / "c"), "--dataset", f"folder:{folder}", "--per-class", "3", "--out",
                 str(tmp_path / "e")]) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    enrolled = engine_of(tmp_path / "e")
    assert np.allclose(np.load(bundle / manifest["enrollable"]["bank"]), enrolled.bank_head.bank.numpy(), atol=1e-5)
    assert np.array_equal(np.load(bundle / manifest["enrollable"]["bank_labels"]), enrolled.bank_head.bank_labels)


def test_an_ncs2_bundle_enrols_into_the_sticks_ranking_graph(five, tmp_path):
    """The distance step on the stick: the bank as constants of ranked-G.bin, rewritten by the board's
    enrol exactly as the export laid them out, and classifying as the host's vote does."""
    from slicenet.boards import run_engine

    assert main(["export", str(five), "--target", "ncs2", "--enrollable", "--no-check-2022", "--out",
                 str(tmp_path / "x")]) == 0
    bundle = next((tmp_path / "x").glob("*/ncs2"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    stick = manifest["enrollable"]["stick"]
    bank = np.load(bundle / "bank-0.npy")
    assert stick["capacity"] == 2 * len(bank) and stick["model"] == "ranked-0.xml"
    assert "--distance stick" in (bundle / "README.md").read_text()
    assert any(v["runtime"] == "openvino+numpy-vote" and v["agreement"] == 1.0 for v in manifest["verification"])

    def slots_hold(bundle, stick, bank):
        weights = (bundle / stick["weights"]).read_bytes()
        expected = run_engine.slot_constants(bank, "euclidean", stick["capacity"])
        slots = (stick["constants"]["bank_t"], stick["constants"]["bank_norm2"])
        return all(weights[c["offset"]:c["offset"] + c["size"]] == v.astype(np.float16).tobytes()
                   for c, v in zip(slots, expected, strict=True))

    assert slots_hold(bundle, stick, bank)  # numpy's FP16 rounding is the export's, bit for bit
    folder = write_folder(tmp_path / "new", ["5", "6"])
    result = runner(bundle, "enrol", bundle, folder, "--per-class", "4", "--runtime", "openvino")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    stick, bank = manifest["enrollable"]["stick"], np.load(bundle / manifest["enrollable"]["bank"])
    assert stick["model"] == "ranked-1.xml" and not (bundle / "ranked-0.bin").exists() and slots_hold(bundle, stick,
                                                                                                       bank)
    result = runner(bundle, "run", "--bundle", bundle, "--runtime", "openvino", "--distance", "stick", "--warmup",
                    "1", "--iterations", "3", "--out", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    measured = json.loads((tmp_path / "r.json").read_text())
    assert measured["distance_step"] == "stick" and measured["samples_matching_expected"] == measured["samples"]
    images = np.stack([np.asarray(Image.open(p)) for p in sorted((folder / "6").iterdir())])
    nearest = run_engine.openvino_runner(str(bundle / stick["model"]), "CPU", output_name="nearest")[0]
    labels = np.load(bundle / manifest["enrollable"]["bank_labels"])
    on_stick = run_engine.majority(labels[run_engine.embed_all(nearest, images, 1)], 7)
    embed = run_engine.make_embed(str(bundle), manifest, "openvino", "CPU")
    assert on_stick == run_engine.classify(run_engine.embed_all(embed, images, 1), bank, labels, 7, 9, "euclidean",
                                           "majority")
    # slicenet bench times the three paths interleaved
    assert main(["bench", str(bundle), "--runtime", "openvino", "--distance", "graph", "host", "stick", "--count", "4",
                 "--warmup", "1", "--rounds", "1", "--json", str(tmp_path / "b.json"), "--results",
                 str(tmp_path / "bench")]) == 0
    rows = json.loads((tmp_path / "b.json").read_text())
    assert [r["distance_step"] for r in rows] == ["graph", "host", "stick"] and rows[2]["estimates"] == []


def test_the_sticks_slots_are_checked_before_anything_is_written(five, tmp_path, run_main):
    bank = len(engine_of(five).bank_head.bank)
    status, err = run_main(["export", str(five), "--target", "ncs2", "--enrollable", "--capacity", str(bank - 1),
                            "--out", str(tmp_path / "y")])
    assert status == 2 and "--capacity" in err and not (tmp_path / "y").exists()
    assert main(["export", str(five), "--target", "ncs2", "--enrollable", "--no-check-2022", "--capacity", str(bank),
                 "--out", str(tmp_path / "x")]) == 0
    bundle = next((tmp_path / "x").glob("*/ncs2"))
    before = sorted(p.name for p in bundle.iterdir()), (bundle / "manifest.json").read_bytes()
    result = runner(bundle, "enrol", bundle, write_folder(tmp_path / "new", ["5"]), "--per-class", "1")
    assert result.returncode == 2 and "slots" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (sorted(p.name for p in bundle.iterdir()), (bundle / "manifest.json").read_bytes()) == before
    assert main(["export", str(five), "--target", "onnx", "--enrollable", "--out", str(tmp_path / "o")]) == 0
    onnx_bundle = next((tmp_path / "o").glob("*/onnx"))
    result = runner(onnx_bundle, "run", "--bundle", onnx_bundle, "--runtime", "openvino", "--distance", "stick")
    assert result.returncode == 2 and "--distance stick needs an NCS2 bundle" in result.stderr
    status, err = run_main(["export", str(five), "--target", "onnx", "--enrollable", "--capacity", str(bank * 2),
                            "--out", str(tmp_path / "z")])
    assert status == 2 and "use --target ncs2" in err and not (tmp_path / "z").exists()
    status, err = run_main(["bench", str(onnx_bundle), "--runtime", "openvino", "--distance", "stick"])
    assert status == 2 and "no stick-side distance step" in err


def test_enrol_on_a_bundle_without_the_bank_outside_is_one_line(tiny_run, tmp_path):
    assert main(["export", str(tiny_run), "--target", "onnx", "--out", str(tmp_path / "x")]) == 0
    bundle = next((tmp_path / "x").glob("*/onnx"))
    result = subprocess.run([sys.executable, str(bundle / "run_engine.py"), "enrol", str(bundle), str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--enrollable" in result.stderr


def test_the_boards_shifted_copies_are_slicenets():
    from slicenet.boards import run_engine

    from slicenet.data import shifted_copies

    rng = np.random.default_rng(3)
    images, labels = rng.integers(0, 256, (5, 12, 10), dtype=np.uint8), np.arange(5) % 2
    for pixels in (0, 1, 2):
        ours, theirs = shifted_copies(images, labels, pixels), run_engine.shifted_copies(images, labels, pixels)
        assert np.array_equal(ours[0], theirs[0]) and np.array_equal(ours[1], theirs[1])


def test_the_boards_partial_sort_keeps_a_stable_sorts_order():
    """The host's k nearest through a partition: the same indices, in the same order, as a stable
    argsort, ties (to the smaller index) included."""
    from slicenet.boards import run_engine

    rng = np.random.default_rng(0)
    for _ in range(100):
        d = rng.integers(0, 5, (3, 30)).astype(float)  # many exact ties
        k = int(rng.integers(1, 32))
        assert np.array_equal(run_engine.nearest(d, k), np.argsort(d, axis=1, kind="stable")[:, :k])
