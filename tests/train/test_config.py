"""TrainConfig: notes on every key, TOML + --set overrides, errors that name the key before anything loads."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from parley.errors import ConfigError, DataError
from parley.train.config import TrainConfig, describe, field_notes, load_config

from .train_task import REPO, run_cli


def _sections(cls=TrainConfig):
    yield cls
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(getattr(cls(), f.name)):
            yield from _sections(type(getattr(cls(), f.name)))


def test_every_key_has_a_note_and_appears_in_the_help():
    text = describe()
    for cls in _sections():
        notes = field_notes(cls)
        for f in dataclasses.fields(cls):
            if not dataclasses.is_dataclass(getattr(cls(), f.name)):
                assert notes.get(f.name), f"{cls.__name__}.{f.name} has no note"
                assert notes[f.name] in text
    assert "data.clean.min_words = 5" in text and "lora.r = 0" in text and "optim.schedule = \"cosine\"" in text and "max_steps = 0" in text


def test_toml_then_set_overrides_with_types(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text('model = "gpt2"\nmax_steps = 10\n[data]\nsources = ["chatterbot", "pairs:src"]\n'
                    'weights = [1, 0.5]\n[lora]\nr = 8\n[optim]\nlr = 1e-3\n')
    config = load_config(path, ["max_steps=99", "out_dir=runs/x", "lora.r=16", "optim.schedule=linear",
                                "gradient_checkpointing=true", 'lora.target_modules=["q_proj", "v_proj"]', "optim.lr=2e-4"])
    assert (config.model, config.max_steps, config.out_dir) == ("gpt2", 99, "runs/x")
    # A relative input is found beside the config file, whatever the working directory.
    assert config.data.sources == ["chatterbot", f"pairs:{tmp_path / 'src'}"] and config.data.weights == [1.0, 0.5]
    assert (config.lora.r, config.tuning, config.optim.lr, config.optim.schedule) == (16, "lora", 2e-4, "linear")
    assert config.gradient_checkpointing is True and config.lora.target_modules == ["q_proj", "v_proj"]
    assert load_config(None, ["data.sources=chatterbot"]).data.sources == ["chatterbot"]  # a bare string is a 1-list


def test_shipped_recipes_find_their_sources_from_another_directory(tmp_path, monkeypatch):
    from parley.train.dataset import preflight

    from .train_task import REPO

    monkeypatch.chdir(tmp_path)
    for recipe in sorted((REPO / "examples").glob("*.toml")):
        config = load_config(recipe)
        for spec in config.data.sources:
            assert str(tmp_path) not in spec, (recipe.name, spec)
            if "python-reference" not in spec:  # the prose recipe's folder is written by its first README step
                preflight([spec])  # raises if the source is missing
        assert config.out_dir.startswith("runs/")  # outputs go where the command runs
    assert f"pairs:{REPO / 'parley'}" in load_config(REPO / "examples" / "smollm2-lora-chat-code.toml").data.sources


def test_relative_sources_with_options_and_formats_are_anchored(tmp_path):
    path = tmp_path / "conf" / "train.toml"
    path.parent.mkdir()
    path.write_text('[data]\nsources = ["table:qa.csv,prompt=q,response=a", "data/prepared", "/abs/x", "hf:org/set,split=train",'
                    ' "python-stdlib", "pairs:~/src"]\n')
    assert load_config(path).data.sources == [
        f"table:{path.parent / 'qa.csv'},prompt=q,response=a", str(path.parent / "data/prepared"), "/abs/x",
        "hf:org/set,split=train", "python-stdlib", "pairs:~/src"]


@pytest.mark.parametrize("override, message", [
    ("lora.rank=8", "unknown key 'lora.rank'; [lora] has: r, alpha, dropout, target_modules"),
    ("max_step=5", "unknown key 'max_step' (did you mean max_steps?)"),
    ("precision=fp16", "precision = 'fp16' is not allowed: choose one of fp32, bf16"),
    ("optim.schedule=step", "optim.schedule = 'step' is not allowed: choose one of cosine, linear, constant"),
    ("max_steps=ten", "max_steps = 'ten' is not allowed: it must be a whole number"),
    ("gradient_checkpointing=yes", "gradient_checkpointing = 'yes' is not allowed: it must be true or false"),
    ("lora.r=-1", "lora.r = -1 is not allowed: it must be 0 (full fine-tuning) or a rank"),
    ("optim.lr=3", "optim.lr = 3.0 is not allowed: it must be in (0, 1)"),
    ("lora=4", "lora is a section"),
    ("data.weights=[1, 2]", "data.weights has 2 numbers for 1 data.sources"),
    ("log.trackers=[\"mlflow\"]", "log.trackers: 'mlflow' is not one of tensorboard, wandb"),
    ("nonsense", "expected key=value"),
])
def test_errors_name_the_key_and_the_allowed_values(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, ["data.sources=chatterbot", override])
    assert message in str(error.value)


def test_a_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("max_steps = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")
    (tmp_path / "typo.toml").write_text("[optim]\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError, match=r"typo.toml: unknown key 'optim.learning_rate'"):
        load_config(tmp_path / "typo.toml")


def test_no_data_is_a_config_error():
    with pytest.raises(ConfigError, match="data.sources is empty"):
        load_config(None, [])


def test_config_and_data_errors_come_before_any_model_loads(tmp_path):
    """The model named does not exist: were it loaded first, the error would be about the model."""
    missing_model = f"model={tmp_path / 'no-such-model'}"
    bad_key = run_cli("train", "--set", missing_model, "--set", "data.sources=chatterbot", "--set", "lora.r=-2")
    missing_data = run_cli("train", "--set", missing_model, "--set", f"data.sources=chat:{tmp_path / 'nope.jsonl'}",
                           "--set", f"out_dir={tmp_path / 'run'}")
    assert bad_key.returncode == missing_data.returncode == 2
    assert bad_key.stderr.strip() == ("parley: error: lora.r = -2 is not allowed: it must be 0 (full fine-tuning) "
                                      "or a rank such as 8, 16, 64")
    assert missing_data.stderr.strip().endswith(f"data.sources[0]: {tmp_path / 'nope.jsonl'}: no such file or directory")
    assert "Traceback" not in bad_key.stderr + missing_data.stderr
    assert not (tmp_path / "run").exists()


def test_a_prepared_dir_without_a_manifest_is_refused(tmp_path):
    from parley.train.dataset import preflight

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset_dict.json").write_text('{"splits": ["train"]}')
    with pytest.raises(DataError, match="has no manifest.json"):
        preflight([str(tmp_path / "data")])


def test_help_config_lists_the_keys():
    result = run_cli("train", "--help-config")
    assert result.returncode == 0
    assert "lora.r = 0" in result.stdout and "LoRA rank: 0 = full fine-tuning" in result.stdout


@pytest.mark.parametrize("recipe", sorted((REPO / "examples").glob("*.toml")), ids=lambda p: p.name)
def test_every_example_config_is_valid(recipe: Path):
    config = load_config(recipe)
    assert config.data.sources and config.out_dir


def test_a_tracker_that_is_not_installed_is_named():
    import importlib.util

    missing = [name for name in ("tensorboard", "wandb") if importlib.util.find_spec(name) is None]
    if not missing:
        pytest.skip("tensorboard and wandb are both installed here")
    with pytest.raises(ConfigError, match=rf"log.trackers: {missing[0]} is not installed \(pip install {missing[0]}\)"):
        load_config(None, ["data.sources=chatterbot", f'log.trackers=["{missing[0]}"]'])
