"""The terminal wrapper on the stand-in terminal: connecting (never leaking the password),
attaching again after the terminal went away, Market Watch, and the timeframe constants."""

from __future__ import annotations

import threading

import pytest

from mt5_pipeline.bridge import fake_mt5
from mt5_pipeline.bridge.fake_mt5 import FakeMT5
from mt5_pipeline.bridge.terminal import TIMEFRAME_CONSTANTS, Terminal, TerminalError, import_mt5, mt5_timeframe
from mt5_pipeline_tests.bridge.parts import bridge_settings

SECRET = "s3cret-Pa55"


def test_connect_logs_in_with_the_account_and_keeps_the_password_out_of_sight(clock, tmp_path):
    mt5 = FakeMT5(clock=clock)
    settings = bridge_settings(
        tmp_path, BRIDGE_LOGIN="5000001", BRIDGE_PASSWORD=SECRET, BRIDGE_SERVER="Broker-Demo",
        BRIDGE_TERMINAL_PATH=r"C:\MT5\terminal64.exe",
    )  # fmt: skip
    Terminal(mt5).connect(settings)
    [(name, path, kwargs)] = mt5.calls
    assert (name, path) == ("initialize", r"C:\MT5\terminal64.exe")
    assert kwargs == {"login": 5000001, "password": "***", "server": "Broker-Demo"}
    assert mt5.initialized


def test_a_terminal_that_is_not_running_is_a_terminal_error_with_its_code(clock, tmp_path):
    mt5 = FakeMT5(clock=clock)
    mt5.available = False
    with pytest.raises(TerminalError) as err:
        Terminal(mt5).connect(bridge_settings(tmp_path, BRIDGE_LOGIN="5000001", BRIDGE_PASSWORD=SECRET))
    assert "-10003" in str(err.value) and "not found" in str(err.value)
    assert SECRET not in str(err.value)


def test_ensure_attaches_again_after_the_terminal_went_away(terminal, mt5):
    assert terminal.ensure()
    mt5.shutdown()  # the terminal was restarted: "No IPC connection" until initialize runs
    assert terminal.ensure() and mt5.initialized
    assert [c[0] for c in mt5.calls] == ["initialize", "initialize"]
    mt5.shutdown()
    mt5.available = False  # closed for good
    assert not terminal.ensure()
    assert terminal.last_error() == (-10003, "IPC initialize failed, MetaTrader 5 x64 not found")


def test_a_terminal_never_connected_is_not_attached_by_ensure(clock):
    mt5 = FakeMT5(clock=clock)
    assert not Terminal(mt5).ensure()
    assert mt5.calls == []


def test_select_puts_a_hidden_symbol_in_market_watch(terminal, mt5):
    assert "XAUUSD" not in mt5.visible
    info = terminal.select("XAUUSD")
    assert info.visible and info.digits == 2 and "XAUUSD" in mt5.visible
    assert terminal.select("NOSUCH") is None
    assert terminal.last_error()[0] == fake_mt5.RES_E_NOT_FOUND


def test_last_error_in_an_unexpected_shape_is_still_a_code_and_a_text(clock):
    class OddPackage(FakeMT5):
        def last_error(self):  # a package build that answers a bare string
            return "terminal busy"

    assert Terminal(OddPackage(clock=clock)).last_error() == (-1, "terminal busy")


def test_a_session_holds_the_terminal_for_one_thread(terminal):
    seen = []
    with terminal.session() as mt5:
        worker = threading.Thread(target=lambda: seen.append(terminal.lock.acquire(blocking=False)))
        worker.start()
        worker.join()
        assert mt5 is terminal.mt5
    assert seen == [False]
    assert terminal.lock.acquire(blocking=False)
    terminal.lock.release()


def test_every_timeframe_maps_to_the_packages_constant():
    assert {tf: mt5_timeframe(fake_mt5, tf) for tf in ("M1", "H4", "D1", "MN1")} == {
        "M1": 1, "H4": 16388, "D1": 16408, "MN1": 49153,
    }  # fmt: skip
    assert all(hasattr(fake_mt5, name) for name in TIMEFRAME_CONSTANTS.values())


def test_without_the_package_the_error_says_how_to_get_it():
    try:
        import MetaTrader5  # noqa: F401
    except ImportError:
        with pytest.raises(TerminalError, match=r"pip install \.\[mt5\].*--fake"):
            import_mt5()
    else:  # pragma: no cover - a Windows machine with the terminal's package
        assert import_mt5() is not None
