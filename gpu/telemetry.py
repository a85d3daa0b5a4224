"""Clock, power and temperature of the GPU sampled in the background during a measurement.

    with Telemetry() as t:          # starts sampling (every ``interval`` seconds)
        run_the_measurement()
    t.summary()                     # {"clocks.sm": {"min", "median", "max", "n", "unit"}, ...}

Sources, first that works: NVML through ``pynvml`` (``nvidia-ml-py``) when importable, else one
``nvidia-smi --query-gpu=clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv,noheader,
nounits -lms <ms>`` process whose lines a reader thread parses. Units: MHz, MHz, W, C. With
neither, ``Telemetry()`` raises RuntimeError when entered (``required=False``: it samples
nothing and ``summary()`` is ``{}``, for callers where telemetry is a nice-to-have).

``command`` replaces the nvidia-smi command line (a program printing the same CSV lines), which
is how the parsing is tested on a CPU.
"""
from __future__ import annotations

import shutil
import statistics
import subprocess
import threading
import time

__all__ = ["Telemetry", "QUERY", "UNITS", "parse_line", "available"]

QUERY = ("clocks.sm", "clocks.mem", "power.draw", "temperature.gpu")
UNITS = {"clocks.sm": "MHz", "clocks.mem": "MHz", "power.draw": "W", "temperature.gpu": "C"}


def _nvml():
    try:
        import pynvml  # type: ignore
    except ImportError:
        return None
    return pynvml


def available() -> str | None:
    """The backend Telemetry would use ("nvml", "nvidia-smi") or None."""
    if _nvml() is not None:
        return "nvml"
    if shutil.which("nvidia-smi"):
        return "nvidia-smi"
    return None


def parse_line(line: str) -> dict[str, float] | None:
    """One ``nvidia-smi --format=csv,noheader,nounits`` line of :data:`QUERY` -> values, None
    for a line that is not one (a header, ``[N/A]``, a blank)."""
    if not isinstance(line, str):
        raise TypeError(f"line: expected a str, got {type(line).__name__}")
    parts = [p.strip() for p in line.strip().split(",")]
    if len(parts) != len(QUERY):
        return None
    out = {}
    for name, p in zip(QUERY, parts):
        try:
            out[name] = float(p)
        except ValueError:
            continue                    # "[N/A]" for one field keeps the others
    return out or None


class Telemetry:
    """Background sampler; see the module docstring.

    ``interval`` seconds between samples (>= 0.01), ``device`` the GPU index, ``required``
    whether entering without a source raises, ``command`` an nvidia-smi replacement."""

    def __init__(self, interval: float = 0.05, *, device: int = 0, required: bool = True,
                 command: list[str] | None = None):
        if not isinstance(interval, (int, float)) or not interval >= 0.01:
            raise ValueError(f"interval: expected a number of seconds >= 0.01, got {interval!r}")
        if not isinstance(device, int) or device < 0:
            raise ValueError(f"device: expected a GPU index >= 0, got {device!r}")
        if command is not None and (not isinstance(command, (list, tuple)) or not command):
            raise TypeError(f"command: expected a non-empty list of strings, got {command!r}")
        self.interval, self.device, self.required = float(interval), device, required
        self.command = list(command) if command is not None else None
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.backend: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    # -- sampling -----------------------------------------------------------------------------
    def _add(self, values: dict[str, float]) -> None:
        with self._lock:
            self.samples.append((time.perf_counter(), values))

    def _run_nvml(self, nv) -> None:
        h = nv.nvmlDeviceGetHandleByIndex(self.device)
        while not self._stop.is_set():
            v = {}
            for name, fn in (("clocks.sm", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
                             ("clocks.mem", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)),
                             ("power.draw", lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0),
                             ("temperature.gpu", lambda: nv.nvmlDeviceGetTemperature(
                                 h, nv.NVML_TEMPERATURE_GPU))):
                try:
                    v[name] = float(fn())
                except Exception:  # noqa: BLE001 - a field the driver does not report
                    pass
            if v:
                self._add(v)
            self._stop.wait(self.interval)

    def _run_pipe(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            v = parse_line(line)
            if v:
                self._add(v)
            if self._stop.is_set():
                break

    def __enter__(self) -> "Telemetry":
        self.samples = []
        self._stop.clear()
        nv = _nvml() if self.command is None else None
        if nv is not None:
            try:
                nv.nvmlInit()
                self.backend = "nvml"
                self._thread = threading.Thread(target=self._run_nvml, args=(nv,), daemon=True)
                self._thread.start()
                return self
            except Exception:  # noqa: BLE001 - fall back to nvidia-smi
                self.backend = None
        cmd = self.command
        if cmd is None and shutil.which("nvidia-smi"):
            cmd = ["nvidia-smi", f"--query-gpu={','.join(QUERY)}",
                   "--format=csv,noheader,nounits", "-i", str(self.device),
                   "-lms", str(max(10, int(self.interval * 1000)))]
        if cmd is None:
            if self.required:
                raise RuntimeError("Telemetry: no source of GPU clocks: neither pynvml "
                                   "(nvidia-ml-py) nor nvidia-smi is available on this machine")
            return self
        try:
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                          text=True, bufsize=1)
        except OSError as e:
            if self.required:
                raise RuntimeError(f"Telemetry: could not start {cmd[0]!r}: {e}") from None
            return self
        self.backend = "nvidia-smi" if self.command is None else "command"
        self._thread = threading.Thread(target=self._run_pipe, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.backend == "nvml":
            try:
                _nvml().nvmlShutdown()
            except Exception:  # noqa: BLE001
                pass

    # -- results ------------------------------------------------------------------------------
    def summary(self) -> dict[str, dict]:
        """Per quantity: min, median, max, the sample count and the unit; {} without samples."""
        with self._lock:
            samples = list(self.samples)
        out = {}
        for name in QUERY:
            vals = [v[name] for _, v in samples if name in v]
            if vals:
                out[name] = {"min": min(vals), "median": statistics.median(vals),
                             "max": max(vals), "n": len(vals), "unit": UNITS[name]}
        return out

    def text(self) -> str:
        """One line: 'clocks.sm 1755/1980/1980 MHz, power.draw ...' (min/median/max)."""
        s = self.summary()
        if not s:
            return "no telemetry"
        return ", ".join(f"{k} {v['min']:g}/{v['median']:g}/{v['max']:g} {v['unit']}"
                         for k, v in s.items())
