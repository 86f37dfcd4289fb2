"""Settings: defaults, derived values, and a clear stop on every kind of bad value."""

import pytest

from mt5_pipeline.settings import DEV_API_KEY, Settings, SettingsError, documented_variables


def load(**env):
    return Settings.from_env({k: str(v) for k, v in env.items()}, env_file=None)


def test_defaults_match_the_interfaces_page():
    s = load()
    assert s.database_url == "sqlite:///./data/mt5.db"
    assert (s.api_host, s.api_port) == ("127.0.0.1", 18001)
    assert s.ea_server_url == "http://127.0.0.1:8080/signals"
    assert (s.ea_push_interval, s.ea_push_enabled, s.ea_request_timeout, s.ea_batch_size) == (30, True, 10, 100)
    assert s.signal_ttl_seconds == 60
    assert (s.signal_buy_threshold, s.signal_sell_threshold) == (0.55, 0.45)
    assert (s.default_sl_pips, s.default_tp_pips) == (20, 40)
    assert str(s.model_dir) == "models"
    assert s.max_bar_age_seconds("M1") == 150  # two bars + 30 s grace
    assert s.effective_api_keys == (DEV_API_KEY,)


def test_ea_url_from_ip_and_port_and_override():
    assert load(EA_SERVER_IP="192.168.15.18", EA_SERVER_PORT=8080).ea_server_url == "http://192.168.15.18:8080/signals"
    assert load(EA_SERVER_URL="https://ea.example:8443/signals").ea_server_url == "https://ea.example:8443/signals"


def test_key_rotation_and_per_symbol_overrides():
    s = load(API_KEYS="new-key, old-key", SYMBOL_SL_TP_PIPS="usdjpy=25/50", PIP_SIZES="XAUUSD=0.1")
    assert s.effective_api_keys == ("new-key", "old-key")
    assert s.sl_tp_pips("USDJPY") == (25, 50)
    assert s.sl_tp_pips("EURUSD") == (20, 40)
    assert s.pip_sizes == {"XAUUSD": 0.1}


@pytest.mark.parametrize(
    "env, named",
    [
        ({"EA_PUSH_INTERVAL": "thirty"}, "EA_PUSH_INTERVAL"),
        ({"EA_PUSH_INTERVAL": "0"}, "EA_PUSH_INTERVAL"),
        ({"SIGNAL_BUY_THRESHOLD": "1.5"}, "SIGNAL_BUY_THRESHOLD"),
        ({"SIGNAL_SELL_THRESHOLD": "-0.1"}, "SIGNAL_SELL_THRESHOLD"),
        ({"SIGNAL_BUY_THRESHOLD": "0.4", "SIGNAL_SELL_THRESHOLD": "0.6"}, "SIGNAL_BUY_THRESHOLD"),
        ({"EA_SERVER_URL": "ftp://ea/signals"}, "EA_SERVER_URL"),
        ({"EA_SERVER_URL": "http://:8080/x"}, "EA_SERVER_URL"),
        ({"EA_SERVER_PORT": "70000"}, "EA_SERVER_PORT"),
        ({"EA_PUSH_ENABLED": "maybe"}, "EA_PUSH_ENABLED"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"SYMBOL_SL_TP_PIPS": "EURUSD=20"}, "SYMBOL_SL_TP_PIPS"),
        ({"MT5_ENV": "staging"}, "MT5_ENV"),
        ({"RF_MAX_SAMPLES": "2"}, "RF_MAX_SAMPLES"),
    ],
)
def test_bad_value_names_the_variable(env, named):
    with pytest.raises(SettingsError) as err:
        load(**env)
    assert named in str(err.value)


def test_several_bad_values_are_all_named():
    with pytest.raises(SettingsError) as err:
        load(EA_PUSH_INTERVAL="x", EA_BATCH_SIZE="y")
    assert "EA_PUSH_INTERVAL" in str(err.value) and "EA_BATCH_SIZE" in str(err.value)


def test_production_refuses_missing_or_example_key():
    with pytest.raises(SettingsError, match="API_KEYS"):
        load(MT5_ENV="production")
    with pytest.raises(SettingsError, match="example key"):
        load(MT5_ENV="production", API_KEYS=DEV_API_KEY)
    with pytest.raises(SettingsError, match="EA_API_KEY: must be set"):
        load(MT5_ENV="production", API_KEYS="a-real-secret")
    s = load(MT5_ENV="production", API_KEYS="a-real-secret", EA_API_KEY="the-ea-key")
    assert s.effective_api_keys == ("a-real-secret",)
    # Pull mode sends nothing to the EA: no outbound key needed.
    assert load(MT5_ENV="production", API_KEYS="a-real-secret", EA_PUSH_ENABLED="false").ea_api_key == ""


def test_production_error_never_prints_the_key():
    with pytest.raises(SettingsError) as err:
        load(MT5_ENV="production", API_KEYS=f"{DEV_API_KEY},another-secret")
    assert "another-secret" not in str(err.value)


def test_dotenv_file_is_read_and_environment_wins(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("EA_PUSH_INTERVAL=15\nEA_BATCH_SIZE=50\n")
    s = Settings.from_env({"EA_BATCH_SIZE": "7"}, env_file=env_file)
    assert (s.ea_push_interval, s.ea_batch_size) == (15, 7)


def test_cli_stops_with_the_variable_named(monkeypatch, capsys):
    from mt5_pipeline.apps.cli import main

    monkeypatch.setenv("EA_PUSH_INTERVAL", "soon")
    monkeypatch.chdir("/")
    assert main(["db", "upgrade"]) == 2
    assert "EA_PUSH_INTERVAL" in capsys.readouterr().err


def test_every_variable_is_documented():
    names = [v.name for v in documented_variables()]
    assert len(names) == len(set(names))
    assert {"DATABASE_URL", "API_KEYS", "EA_SERVER_URL", "SIGNAL_MAX_BAR_AGE_SECONDS", "MODEL_MAX_AGE_HOURS"} <= set(
        names
    )
