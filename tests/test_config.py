"""Configuration: a valid file loads; a bad one is refused with the file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiosk import config

VALID = """\
[station]
id = "wound-clinic-1"
data_dir = "/var/lib/kiosk"

[keyserver]
url = "https://keys.example.test"

[[destination]]
name = "share"
type = "folder"
path = "/mnt/clinic-share"
encryption = "passphrase"
passphrase_file = "/etc/kiosk/share.key"

[[destination]]
name = "usb"
type = "folder"
path = "/media/usb"
recipients = ["wound-team"]
"""


def test_valid_configuration_loads(tmp_path: Path) -> None:
    path = tmp_path / "kiosk.toml"
    path.write_text(VALID)
    loaded = config.load(path)
    assert loaded.station.id == "wound-clinic-1"
    assert [d.name for d in loaded.destination] == ["share", "usb"]
    assert loaded.destination_named("usb").encryption == "envelope"
    assert loaded.public_keys_file == Path("/var/lib/kiosk/keyserver-keys.json")


def test_environment_variable_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "elsewhere.toml"
    path.write_text(VALID)
    monkeypatch.setenv("KIOSK_CONFIG", str(path))
    assert config.load(None).source == path


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (('path = "/mnt/clinic-share"\n', ""), "line 8: destination[1].path: required but missing"),
        (
            ('type = "folder"\npath = "/media/usb"', 'type = "folder"\npaht = "/media/usb"'),
            "line 18: destination[2].paht: unknown setting",
        ),
        (('id = "wound-clinic-1"', 'id = "wound clinic/1"'), "line 2: station.id"),
        (('url = "https://keys.example.test"', 'url = "keys.example.test"'), "line 6: keyserver.url"),
        (
            ('passphrase_file = "/etc/kiosk/share.key"\n', ""),
            "line 8: destination[1]: passphrase encryption needs",
        ),
        (('name = "usb"', 'name = "share"'), "destination names must be unique: share"),
        (
            ('type = "folder"\npath = "/media/usb"', 'type = "fax"\npath = "/media/usb"'),
            "line 17: destination[2].type",
        ),
    ],
)
def test_errors_name_the_line_and_key(tmp_path: Path, edit: tuple[str, str], expected: str) -> None:
    path = tmp_path / "kiosk.toml"
    path.write_text(VALID.replace(*edit))
    with pytest.raises(config.ConfigError) as caught:
        config.load(path)
    assert expected in str(caught.value)
    assert str(path) in str(caught.value)


def test_envelope_destination_without_keyserver_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "kiosk.toml"
    path.write_text(VALID.replace('[keyserver]\nurl = "https://keys.example.test"\n', ""))
    with pytest.raises(
        config.ConfigError, match="'usb' uses envelope encryption but \\[keyserver\\] is missing"
    ):
        config.load(path)


def test_syntax_errors_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "kiosk.toml"
    path.write_text("[station\nid=1")
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.load(path)
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(tmp_path / "missing.toml")


def test_unknown_destination_name(tmp_path: Path) -> None:
    path = tmp_path / "kiosk.toml"
    path.write_text(VALID)
    with pytest.raises(config.ConfigError, match="no destination named 'fax' \\(known: share, usb\\)"):
        config.load(path).destination_named("fax")
