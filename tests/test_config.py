import pytest

from slicenet.config import RunConfig, config_from_toml, make_config, to_toml, with_preset_defaults
from slicenet.errors import InputError


def test_defaults_and_overrides():
    config = make_config(method="pso", generations=[5, 7], sigma_scale=1)
    assert config.method == "pso" and config.generations == (5, 7) and config.sigma_scale == 1.0
    assert make_config() == RunConfig()


def test_toml_round_trip(tmp_path):
    config = make_config(dataset="digits", seed=3, generations=[4])
    path = tmp_path / "run.toml"
    path.write_text(to_toml(config, {"command": "x"}))
    assert config_from_toml(path) == config
    assert config_from_toml(path, seed=5).seed == 5  # flags override the file


def test_preset_defaults_yield_to_what_the_user_set():
    radu = with_preset_defaults(make_config(preset="radu"), set())
    assert (radu.search_images, radu.generations, radu.vote) == (300, (30, 250), "local-mean")
    mine = with_preset_defaults(make_config(preset="radu", vote="majority", search_images=100),
                                {"preset", "vote", "search_images"})
    assert (mine.search_images, mine.generations, mine.vote) == (100, (30, 250), "majority")
    assert with_preset_defaults(make_config(), set()) == RunConfig()  # the default preset has none


@pytest.mark.parametrize("overrides,match", [
    ({"method": "sgd"}, "method"), ({"n_neighbors": 0}, "n_neighbors"), ({"generations": [0]}, "positive"),
    ({"validation_fraction": 1.5}, "validation_fraction"), ({"bogus": 1}, "unknown config key"),
    ({"seed": "three"}, "expected int"),
    ({"sigma_scale": float("inf")}, "sigma_scale\\): expected a finite number, got inf"),  # a flag or TOML's inf
    ({"temperature": float("nan")}, "expected a finite number, got nan"),
    ({"n_neighbors": True}, "n_neighbors\\): expected int, got True"), ({"sigma_scale": False}, "expected float"),
])
def test_bad_values(overrides, match):
    with pytest.raises(InputError, match=match):
        make_config(**overrides)


def test_bad_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("method = \n")
    with pytest.raises(InputError, match="not valid TOML"):
        config_from_toml(path)
    path.write_text("methd = 'cma'\n")
    with pytest.raises(InputError, match="unknown config key"):
        config_from_toml(path)


def test_auto_bank_shifts():
    from slicenet.pipeline import resolve_bank_shifts

    assert resolve_bank_shifts(-1, 4_000, (28, 28)) == 1  # MNIST-5k: a small bank gains from shifted copies
    assert resolve_bank_shifts(-1, 60_000, (28, 28)) == 0  # Fashion-MNIST: the bank is large already
    assert resolve_bank_shifts(-1, 1_437, (8, 8)) == 0  # digits: one pixel is not a small shift on 8x8
    assert resolve_bank_shifts(2, 60_000, (28, 28)) == 2  # an explicit request always wins


def test_old_run_config_keeps_its_meaning(tmp_path):
    from slicenet.runs import load_config

    # slicenet 0.1 wrote no scoring or bank_shifts keys: they meant holdout scoring and a plain bank.
    (tmp_path / "config.toml").write_text('dataset = "mnist"\nmethod = "cma"\n\n[slicenet]\nkind = "optimise"\n')
    config = load_config(tmp_path)
    assert config.scoring == "holdout" and config.bank_shifts == 0 and config.method == "cma"
