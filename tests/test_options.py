"""options: one home for every default; the same checks for the command line, JSON and Python."""

import dataclasses
import json

import pytest

from gridtsne import assign, render, tiles
from gridtsne.cli import main
from gridtsne.errors import OptionError
from gridtsne.options import (
    FITS,
    FORMATS,
    SOLVERS,
    STAGE_OPTIONS,
    AssignOptions,
    PipelineOptions,
    ReduceOptions,
    RenderOptions,
)

#: Options that come from arguments (or from `all` itself), not from flags.
NOT_FLAGS = {"paths", "output", "exclude"}
#: Options of one stage's own command only: `all` makes the whole picture, never a shard.
NOT_ON_ALL = {"shard"}
COMMAND_OF_STAGE = {"embed": "embed", "reduce": "reduce", "assign": "assign", "render": "render"}


#: Options that mean the same in several stages: one flat value goes to each of them.
SHARED = {"relayout"}


def test_option_names_are_unique_across_stages_so_one_flat_mapping_serves_all():
    names = [name for kind in STAGE_OPTIONS.values() for name in kind.names() if name not in SHARED]
    assert len(names) == len(set(names))
    options = PipelineOptions.from_flat({"relayout": True})
    assert options.reduce.relayout and options.assign.relayout


@pytest.mark.parametrize("stage", list(STAGE_OPTIONS))
def test_every_option_has_a_flag_on_its_command_and_on_all_with_the_dataclass_default(stage):
    kind = STAGE_OPTIONS[stage]
    for command_name in (COMMAND_OF_STAGE[stage], "all"):
        command = main.commands[command_name]
        flags = {param.name: param for param in command.params}
        for spec in dataclasses.fields(kind):
            if spec.name in NOT_FLAGS or (command_name == "all" and spec.name in NOT_ON_ALL):
                continue
            assert spec.name in flags, f"{command_name} has no flag for {stage} option {spec.name}"
            param = flags[spec.name]
            assert f"--{spec.name.replace('_', '-')}" in param.opts
            if isinstance(spec.default, bool):
                assert param.default == spec.default
            elif spec.default not in (None, ()):  # shown in --help, and applied by the dataclass
                shown = ",".join(spec.default) if isinstance(spec.default, tuple) else str(spec.default)
                assert param.show_default == shown


def test_the_names_of_each_choice_are_the_ones_the_stages_implement():
    assert SOLVERS == ("auto", *assign.SOLVERS)
    assert FITS == tuple(tiles.FITS)
    assert FORMATS == ("auto", *render.WRITERS)


@pytest.mark.parametrize(
    ("name", "value"),
    [("seed", -1), ("seed", 2**32), ("seed", "3.5"), ("tile", 0), ("tile", 100_000), ("gap", 10**6),
     ("grid", "0x3"), ("grid", "tall"), ("aspect", "wide"), ("background", "no-such-colour"),
     ("quality", 101), ("solver", "magic"), ("refine", "yes"), ("perplexity", 0), ("pca_dims", 1),
     ("batch_size", 0), ("shard", "3/2"), ("ext", ""), ("format", "gif")],
)  # fmt: skip
def test_a_bad_value_is_refused_naming_its_option(name, value):
    with pytest.raises(OptionError) as error:
        PipelineOptions.from_flat({name: value})
    assert error.value.option == name


def test_an_unknown_option_is_refused_naming_it():
    with pytest.raises(OptionError, match="no option 'tile_size'") as error:
        PipelineOptions.from_flat({"tile_size": 64})
    assert error.value.option == "tile_size"
    with pytest.raises(OptionError):
        ReduceOptions.from_dict({"grid": "3x3"})  # another stage's option


def test_options_round_trip_through_json():
    options = PipelineOptions.from_flat(
        {"paths": ["photos"], "grid": "12x16", "seed": 7, "perplexity": 12.5, "tile": 64, "ext": "jpg,PNG"}
    )
    again = PipelineOptions.from_flat(json.loads(json.dumps(options.to_flat())))
    assert again == options
    assert options.assign.grid == (12, 16) and options.embed.ext == (".jpg", ".png")


def test_values_are_normalised_whatever_their_form():
    assert AssignOptions(grid="12x16") == AssignOptions(grid=[12, 16]) == AssignOptions(grid=(12, 16))
    assert AssignOptions(grid="auto") == AssignOptions()
    assert RenderOptions(tile="64").tile == 64  # as typed on a command line


def test_the_command_line_names_the_flag_of_a_bad_value(cli, tmp_path):
    result = cli("reduce", "-w", tmp_path, "--seed", "-1")
    assert result.exit_code == 2 and "'--seed'" in result.stderr and "4294967295" in result.stderr
    result = cli("render", tmp_path / "m.png", "-w", tmp_path, "--tile", "100000")
    assert result.exit_code == 2 and "'--tile'" in result.stderr
    assert "Traceback" not in result.output
