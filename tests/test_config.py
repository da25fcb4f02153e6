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
