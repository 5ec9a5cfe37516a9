"""The trainer's config: one frozen dataclass, TOML + `--key value` overrides, a CLI generated from its fields."""
import dataclasses
from pathlib import Path

import pytest

from train.config import TrainConfig, build_parser, parse_cli

REPO = Path(__file__).resolve().parent.parent


def test_command_line_options_override_the_toml_file_which_overrides_the_defaults(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[data]\nimage_size = 32\nflip = false\n[optimization]\nlr = 1\nbatch_size = 8\n')
    config, source = parse_cli(["--config", str(path), "--batch_size", "2", "--flip", "--amp", "bf16",
                                "--reg_lambda", "0.5", "--grad_checkpointing", "no"])
    assert source == str(path)
    assert (config.image_size, config.lr, config.batch_size, config.flip) == (32, 1.0, 2, True)
    assert (config.amp, config.reg_lambda, config.grad_checkpointing) == ("bf16", 0.5, False)
    assert isinstance(config.lr, float) and config.d_model == TrainConfig().d_model
    assert parse_cli([])[0] == TrainConfig()


def test_every_config_field_has_help_and_a_typed_command_line_option():
    parser = build_parser()
    options = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata["help"] and f.name in options
        assert options[f.name].help.startswith(f.metadata["help"])
    assert options["on_bad_image"].choices == ("skip", "stop")
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().lr = 1.0


@pytest.mark.parametrize("values, message", [
    ({"learning_rate": 1e-3}, r"unknown config fields \['learning_rate'\]"),
    ({"batch_size": "4"}, "batch_size must be of type int, got '4'"),
    ({"flip": 1}, "flip must be of type bool"),
    ({"amp": "fp8"}, r"amp must be one of \['none', 'bf16', 'fp16'\]"),
    ({"image_size": 40}, "image_size must be a multiple of 16"),
    ({"encoder": "clip_vision"}, "needs clip_vision = the path"),
    ({"grad_accum": 0}, "grad_accum must be > 0"),
    ({"divergence_factor": 0.5}, r"divergence_factor must be 0 \(no check\) or > 1 .* got 0.5"),
])
def test_bad_config_values_are_rejected_naming_the_field(values, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(values)


def test_a_bad_command_line_value_exits_with_the_reason(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("batch_sise = 4\n")
    with pytest.raises(SystemExit, match="unknown config fields"):
        parse_cli(["--config", str(path)])


def test_the_example_config_is_valid_and_points_at_the_tiny_checkpoint():
    config = TrainConfig.from_toml(REPO / "train" / "example.toml")
    assert config.base_checkpoint.endswith("sd15_tiny_clip.safetensors") and config.image_size == 64
    assert TrainConfig.from_dict(config.to_dict()) == config
