"""Broker fixtures: real Mosquitto processes on free loopback ports (see tests/broker.py)."""

from __future__ import annotations

import importlib.util
import logging
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/broker.py is a helper module, not a package

from broker import Broker, TlsFiles, make_tls_files, mosquitto_binary

NO_MOSQUITTO = "mosquitto binary not found (apt-get install mosquitto); MQTT tests need a real broker"
TRAIN_EXTRA = ("tensorflow", "keras")


def missing_train_extra() -> str | None:
    """The first module of the [train] extra that cannot be found (looked up, not imported), or None."""
    for name in TRAIN_EXTRA:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except ImportError:
            return name
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    # Tests marked `train` need TensorFlow; without the extra they are skipped, not failed.
    if item.get_closest_marker("train") is not None and (name := missing_train_extra()):
        pytest.skip(f"needs the [train] extra: {name} is not installed (pip install 'deepfer[train]')")


@pytest.fixture(autouse=True)
def no_leftover_log_handler() -> Iterator[None]:
    """A CLI run in-process points the root logger at the stderr pytest captured for that test; once the
    capture is closed, a sink thread still logging from a later test would print "--- Logging error ---"."""
    before, level = set(logging.root.handlers), logging.root.level
    yield
    for handler in list(logging.root.handlers):
        if handler not in before and type(handler) is logging.StreamHandler:
            logging.root.removeHandler(handler)
    logging.root.setLevel(level)


@pytest.fixture
def clean_deepfer_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No DEEPFER_* variable (nor a systemd credentials folder) of the caller's shell leaks into settings tests."""
    import os

    for k in list(os.environ):
        if k.startswith("DEEPFER_") or k == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(k)


def write_toml(folder: Path, text: str) -> Path:
    """An edge.toml holding ``text`` in ``folder``."""
    path = folder / "edge.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def mosquitto_bin() -> str:
    binary = mosquitto_binary()
    if binary is None:
        pytest.skip(NO_MOSQUITTO)
    return binary


@pytest.fixture
def broker_factory(mosquitto_bin: str, tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """Make and start brokers with options (persistence, password_file, tls); all are stopped afterwards."""
    brokers: list[Broker] = []

    def make(**options: Any) -> Broker:
        b = Broker(tmp_path / f"broker{len(brokers)}", **options)
        brokers.append(b)
        b.start()
        return b

    yield make
    for b in brokers:
        b.stop()


@pytest.fixture
def broker(broker_factory: Callable[..., Broker]) -> Broker:
    """A running anonymous broker without persistence; ``broker.stop()``/``start()`` keep its port."""
    return broker_factory()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not found (apt-get install openssl); needed to make test certificates")
    return make_tls_files(tmp_path_factory.mktemp("tls"))
