"""Configs from YAML and dotted overrides: types checked, unknown keys named."""

import dataclasses

import pytest

from metapl.config import ConfigError, load_config, save_config, to_dict


@dataclasses.dataclass(frozen=True)
class Inner:
    rate: float = 0.1
    sizes: tuple[int, int] = (1, 2)
    name: str | None = None


@dataclasses.dataclass(frozen=True)
class Outer:
    inner: Inner = Inner()
    steps: int = 10
    flag: bool = False
    extra: dict = dataclasses.field(default_factory=dict)


def test_file_then_overrides_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 20\ninner:\n  rate: 1.0e-3\n")
    cfg = load_config(Outer, path, ["inner.sizes=[3, 4]", "flag=true", "extra.beta=0.5", "inner.name=abc"])
    assert cfg == Outer(Inner(1e-3, (3, 4), "abc"), 20, True, {"beta": 0.5})
    save_config(cfg, tmp_path / "out.yaml")
    assert load_config(Outer, tmp_path / "out.yaml") == cfg
    assert to_dict(cfg)["inner"]["sizes"] == [3, 4]


@pytest.mark.parametrize("overrides, words", [
    (["stepz=3"], "unknown key(s) stepz"),
    (["inner.rat=3"], "unknown key(s) inner.rat"),
    (["steps=1.5"], "steps: expected an integer, got 1.5"),
    (["flag=yes please"], "flag: expected true or false"),
    (["inner.sizes=[1]"], "inner.sizes: expected 2 values, got 1"),
    (["inner=3"], "inner: expected a mapping of Inner fields"),
    (["steps"], "expected key=value"),
])
def test_bad_overrides_are_named(overrides, words):
    with pytest.raises(ConfigError) as e:
        load_config(Outer, None, overrides)
    assert words in str(e.value)


def test_bad_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("steps: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, tmp_path / "bad.yaml")
