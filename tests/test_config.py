"""TempLoraConfig validation: errors name the field, the value and the allowed range."""

import pytest

from templora_memory import ConfigError, TempLoraConfig


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"lora_rank": 0}, "lora_rank=0: Input should be greater than or equal to 1"),
        ({"learning_rate": -1.0}, "learning_rate=-1.0: Input should be greater than 0"),
        ({"lora_dropout": 1.0}, "lora_dropout=1.0: Input should be less than 1"),
        ({"epochs": 0}, "epochs=0: Input should be greater than or equal to 1"),
        ({"window_tokens": 256, "chunk_tokens": 512}, "window_tokens=256 must be >= chunk_tokens=512"),
        ({"target_modules": []}, "target_modules=[] trains nothing"),
        ({"chunk_size": 5}, "chunk_size=5: Extra inputs are not permitted"),
    ],
)
def test_invalid_values_name_field_value_and_range(values, expected):
    with pytest.raises(ConfigError, match="invalid TempLoraConfig") as caught:
        TempLoraConfig(**values)
    assert expected in str(caught.value)


def test_context_check_names_the_sum_and_the_model_context():
    config = TempLoraConfig(chunk_tokens=1024, train_context_tokens=1024, window_tokens=2048)
    with pytest.raises(ConfigError, match=r"1024 \+ 1024 exceeds the model's context of 1536"):
        config.check_against_context(1536)
    config = TempLoraConfig(window_tokens=8192, max_new_tokens=256)
    with pytest.raises(ConfigError, match=r"window_tokens \+ max_new_tokens = 8192 \+ 256"):
        config.check_against_context(8192)


def test_defaults_fit_the_default_model_and_round_trip_as_json():
    config = TempLoraConfig()
    config.check_against_context(8192)
    assert TempLoraConfig.model_validate_json(config.model_dump_json()) == config


def test_every_field_is_documented():
    for name, field in TempLoraConfig.model_fields.items():
        assert field.description, f"{name} has no docstring"


def test_every_field_is_read_from_the_environment_below_explicit_values(monkeypatch):
    from templora_memory.cli import build_parser
    from templora_memory.config import config_from_args, env_var

    assert env_var("window_tokens") == "TEMPLORA_WINDOW_TOKENS"
    monkeypatch.setenv("TEMPLORA_WINDOW_TOKENS", "2048")
    monkeypatch.setenv("TEMPLORA_TARGET_MODULES", "q_proj, v_proj")
    monkeypatch.setenv("TEMPLORA_CACHE_REUSE", "true")
    config = TempLoraConfig()
    assert (config.window_tokens, config.target_modules, config.cache_reuse) == (2048, ["q_proj", "v_proj"], True)
    assert TempLoraConfig(window_tokens=512).window_tokens == 512  # Python wins over the environment
    parse = build_parser().parse_args
    assert config_from_args(parse(["chat", "--window-tokens", "640"])).window_tokens == 640  # so does the CLI
    demo = config_from_args(parse(["demo"]))
    assert (demo.window_tokens, demo.chunk_tokens) == (2048, 128)  # the environment wins over the demo's defaults
    monkeypatch.setenv("TEMPLORA_EPOCHS", "many")
    with pytest.raises(ConfigError, match=r"epochs='many' \(from \$TEMPLORA_EPOCHS\)"):
        TempLoraConfig()


def test_every_config_field_is_in_the_readme_table():
    from pathlib import Path

    from templora_memory.config import env_var

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    for name in TempLoraConfig.model_fields:
        row = f"| `{env_var(name)}` | `--{name.replace('_', '-')}` | `{name}` |"
        assert row in readme, row
