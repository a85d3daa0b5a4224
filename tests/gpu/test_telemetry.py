"""gpu.telemetry on a CPU: CSV parsing, a fake nvidia-smi stream, summaries, clear refusals."""
import sys
import time

import pytest

from gpu import telemetry
from gpu.telemetry import Telemetry


def test_parse_line():
    assert telemetry.parse_line("1980, 2619, 455.12, 41") == {
        "clocks.sm": 1980.0, "clocks.mem": 2619.0, "power.draw": 455.12, "temperature.gpu": 41.0}
    assert telemetry.parse_line("1755, 2619, [N/A], 40") == {
        "clocks.sm": 1755.0, "clocks.mem": 2619.0, "temperature.gpu": 40.0}
    assert telemetry.parse_line("clocks.sm [MHz], clocks.mem [MHz]") is None
    assert telemetry.parse_line("") is None
    with pytest.raises(TypeError, match="line"):
        telemetry.parse_line(3)


def test_fake_stream_summary():
    script = ("import time\n"
              "for i in range(200):\n"
              "    print(f'{1500 + i % 50}, 2619, {300 + i % 7}.5, 40', flush=True)\n"
              "    time.sleep(0.005)\n")
    with Telemetry(0.01, command=[sys.executable, "-c", script]) as t:
        deadline = time.time() + 10
        while len(t.samples) < 20 and time.time() < deadline:
            time.sleep(0.05)
    s = t.summary()
    print(t.text())
    assert t.backend == "command"
    assert s["clocks.sm"]["n"] >= 20 and 1500 <= s["clocks.sm"]["min"] <= s["clocks.sm"]["max"] <= 1549
    assert s["clocks.mem"] == {"min": 2619.0, "median": 2619.0, "max": 2619.0,
                               "n": s["clocks.mem"]["n"], "unit": "MHz"}
    assert s["power.draw"]["unit"] == "W" and s["temperature.gpu"]["median"] == 40.0


@pytest.mark.parametrize("kw, err, match", [
    (dict(interval=0.0), ValueError, "interval"),
    (dict(interval="fast"), ValueError, "interval"),
    (dict(device=-1), ValueError, "device"),
    (dict(command=[]), TypeError, "command"),
])
def test_bad_arguments(kw, err, match):
    with pytest.raises(err, match=match):
        Telemetry(**kw)


def test_no_source(monkeypatch):
    monkeypatch.setattr(telemetry.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "pynvml", None)      # import pynvml -> ImportError
    assert telemetry.available() is None
    with pytest.raises(RuntimeError, match="nvidia-smi"):
        with Telemetry():
            pass
    with Telemetry(required=False) as t:
        pass
    assert t.summary() == {} and t.text() == "no telemetry"
    with pytest.raises(RuntimeError, match="could not start"):
        with Telemetry(command=["/nonexistent/nvidia-smi-fake"]):
            pass
