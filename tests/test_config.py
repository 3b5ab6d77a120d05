"""Config errors name the key path and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.config import ConfigError, load_config, parse_config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "hub.toml"
    p.write_text(text)
    return p


def test_no_file_gives_working_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOVEREIGN_TOKEN", raising=False)
    cfg = load_config(None)
    assert cfg.mqtt.url is None and cfg.http.host == "127.0.0.1" and cfg.http.port == 8700
    assert cfg.mqtt.topic_root == "sovereign" and cfg.discovery.heartbeat_timeout_s == 30


@pytest.mark.parametrize("text,expected", [
    ("[mqtt]\nport = 1883\n", "mqtt.port: Extra inputs are not permitted"),
    ("[http]\nport = 70000\n", "http.port: Input should be less than or equal to 65535 (got 70000)"),
    ("[mqtt]\nurl = \"http://x\"\n", "mqtt.url: broker URL must start with mqtt:// or mqtts://"),
    ("[mqtt]\ntopic_root = \"a/#\"\n", "mqtt.topic_root"),
    ("[discovery]\nheartbeat_timeout_s = -1\n", "discovery.heartbeat_timeout_s: Input should be greater than 0"),
    ("[zeroconf]\ninterfaces = [\"not-an-ip\"]\n", "zeroconf.interfaces"),
    ("[http]\nhost = \"0.0.0.0\"\n", "http: host '0.0.0.0' is not loopback: set http.token"),
    ("[mqtt.tls]\nca_file = \"/nonexistent/ca.pem\"\n", "mqtt.tls: ca_file: file not found"),
    ("log_level = \"loud\"\n", "log_level: Input should be"),
    ("[router.predictor]\ntasks = [\"qa\", \"dance\"]\n", "router.predictor.tasks: unknown task 'dance' (known: intent"),
    ("[router.predictor]\nfeedback_weight = 0\n", "router.predictor.feedback_weight: Input should be greater than 0"),
])
def test_errors_name_key_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: str) -> None:
    monkeypatch.delenv("SOVEREIGN_TOKEN", raising=False)
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    assert expected in str(exc.value)
    assert str(tmp_path / "hub.toml") in str(exc.value)


def test_all_errors_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, "[http]\nport = -1\n[mqtt]\nkeepalive_s = 1\n"))
    assert "http.port" in str(exc.value) and "mqtt.keepalive_s" in str(exc.value)


def test_toml_syntax_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"invalid TOML: .*line 1"):
        load_config(write(tmp_path, "[mqtt\n"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_token_allows_other_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOVEREIGN_TOKEN", "x" * 20)
    assert parse_config({"http": {"host": "0.0.0.0"}}).http.token == "x" * 20


def test_cli_reports_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hub.cli import main
    assert main(["run", "--config", str(write(tmp_path, "[http]\nport = \"eighty\"\n"))]) == 2
    err = capsys.readouterr().err
    assert "http.port: Input should be a valid integer" in err


def test_shipped_example_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOVEREIGN_TOKEN", raising=False)
    example = Path(__file__).resolve().parent.parent / "examples" / "hub.toml"
    cfg = load_config(example)
    defaults = load_config(None)
    assert cfg.model_dump(exclude={"data_dir", "plugins"}) == defaults.model_dump(exclude={"data_dir", "plugins"})
    assert cfg.plugins["ollama"]["poll_interval_s"] == 30
