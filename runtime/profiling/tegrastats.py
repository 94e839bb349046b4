"""Jetson telemetry from `tegrastats` (or jtop when tegrastats is missing), parsed by rail name.

Rail sets differ between boards (Orin Nano/NX: VDD_IN, VDD_CPU_GPU_CV, VDD_SOC; AGX Orin:
VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0, VDDQ_VDD2_1V8AO), and formats differ between releases
(`5832mW/5852mW` on JetPack 5/6, three values on JetPack 7, bare numbers on L4T 32), so nothing
here hard-codes a rail list. Python 3.8 compatible.
"""

import bisect
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

# Rails that measure the whole module input; when present, energy uses it alone (no double count).
TOTAL_POWER_RAILS = ("VDD_IN", "POM_5V_IN")
# tegrastats (and jtop, which reads the same thermal zones) reports an offline sensor as -256 C
# (e.g. the AGX Orin GPU zone while the GPU is idle: rbonghi/jetson_stats#350, #800).
OFFLINE_SENSOR_C = -256.0

_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]+)\s+(\d+)(?:mW)?/(\d+)(?:mW)?(?:/(\d+)(?:mW)?)?")
_TEMP = re.compile(r"\b([A-Za-z0-9_]+)@(-?\d+(?:\.\d+)?)C\b")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_EMC = re.compile(r"\bEMC_FREQ (\d+)%(?:@(\d+))?")
_GR3D = re.compile(r"\bGR3D_FREQ (\d+)%(?:@\[?(\d+))?")
_CPU = re.compile(r"\bCPU \[([^\]]*)\]")


@dataclass
class TegrastatsSample:
    time_s: float
    rails_mw: Dict[str, float] = field(default_factory=dict)  # instantaneous power per rail
    temperatures_c: Dict[str, float] = field(default_factory=dict)
    ram_used_mb: Optional[int] = None
    emc_load_pct: Optional[int] = None
    emc_freq_mhz: Optional[int] = None
    gpu_load_pct: Optional[int] = None
    gpu_freq_mhz: Optional[int] = None
    cpu_loads_pct: List[int] = field(default_factory=list)

    def total_power_mw(self) -> Tuple[Optional[float], str]:
        """Module power and how it was obtained (a total rail, or the sum of all rails)."""
        for rail in TOTAL_POWER_RAILS:
            if rail in self.rails_mw:
                return self.rails_mw[rail], rail
        if self.rails_mw:
            return sum(self.rails_mw.values()), "sum of rails " + "+".join(sorted(self.rails_mw))
        return None, "no power rails"


def parse_tegrastats_line(line: str, time_s: float = 0.0) -> TegrastatsSample:
    sample = TegrastatsSample(time_s=time_s)
    for name, current, _avg, _third in _RAIL.findall(line):
        if name in ("RAM", "SWAP", "EMC_FREQ", "GR3D_FREQ", "IRAM", "CPU"):
            continue
        sample.rails_mw[name] = float(current)
    for name, value in _TEMP.findall(line):
        # "100%@1728" is a CPU core, not a temperature; -256 C is a sensor that is off.
        if not name.isdigit() and float(value) > OFFLINE_SENSOR_C:
            sample.temperatures_c[name] = float(value)
    ram = _RAM.search(line)
    if ram:
        sample.ram_used_mb = int(ram.group(1))
    emc = _EMC.search(line)
    if emc:
        sample.emc_load_pct = int(emc.group(1))
        sample.emc_freq_mhz = int(emc.group(2)) if emc.group(2) else None
    gr3d = _GR3D.search(line)
    if gr3d:
        sample.gpu_load_pct = int(gr3d.group(1))
        sample.gpu_freq_mhz = int(gr3d.group(2)) if gr3d.group(2) else None
    cpu = _CPU.search(line)
    if cpu:
        sample.cpu_loads_pct = [int(m) for m in re.findall(r"(\d+)%", cpu.group(1))]
    return sample


def energy_per_inference_mj(
    samples: List[TegrastatsSample], windows: Sequence[Tuple[float, float]], inferences: int
) -> Dict[str, object]:
    """Energy/inference [mJ] = mean module power [W] x timed time [ms] / inferences (deployment.md §8).

    Only what one target's timed iterations cost: `windows` are their (start, end) on
    `time.monotonic()`, the clock samples are stamped with, and only samples taken inside them count.
    Warm-up, frame encoding, the timer-overhead loop and, in compare mode, the other targets' turns
    stay out (interleaved targets each get the samples that fell in their own iterations).
    """
    ordered = sorted((float(start), float(end)) for start, end in windows)
    starts = [start for start, _ in ordered]
    timed_s = sum(end - start for start, end in ordered)
    powers = []
    source = "no power rails"
    for sample in samples:
        index = bisect.bisect_right(starts, sample.time_s) - 1
        if index < 0 or sample.time_s > ordered[index][1]:
            continue
        power, source = sample.total_power_mw()
        if power is not None:
            powers.append(power)
    result = {"power_source": source, "samples": len(powers), "timed_s": timed_s, "inferences": inferences}
    if not powers or inferences <= 0:
        result.update(mean_power_mw=None, energy_per_inference_mj=None)
        return result
    mean_mw = sum(powers) / len(powers)
    result.update(mean_power_mw=mean_mw, energy_per_inference_mj=mean_mw * timed_s / inferences)
    return result


class TegrastatsSampler:
    """Runs `tegrastats --interval N` in the background and keeps the parsed samples."""

    def __init__(self, interval_ms: int = 100, executable: str = "tegrastats") -> None:
        self.interval_ms = interval_ms
        self.executable = shutil.which(executable)
        self.samples: List[TegrastatsSample] = []
        self._process: Optional[subprocess.Popen] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def available(self) -> bool:
        return self.executable is not None

    def start(self) -> None:
        if not self.available:
            return
        command = [str(self.executable), "--interval", str(self.interval_ms)]
        # Piped, C stdio buffers tegrastats' output in blocks, so lines would arrive (and be stamped)
        # in bursts; stdbuf makes it line-buffered where coreutils has it.
        stdbuf = shutil.which("stdbuf")
        if stdbuf:
            command = [stdbuf, "-oL"] + command
        self._process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            universal_newlines=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            self.samples.append(parse_tegrastats_line(line, time.monotonic()))

    def stop(self) -> List[TegrastatsSample]:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._process.kill()
        if self._thread is not None:
            self._thread.join(timeout=2)
        return self.samples


def read_power_mode() -> Dict[str, Optional[str]]:
    """nvpmodel mode and jetson_clocks state, where the tools exist (they may need sudo)."""
    state: Dict[str, Optional[str]] = {"nvpmodel": None, "jetson_clocks": None}
    if shutil.which("nvpmodel"):
        state["nvpmodel"] = _first_line(["nvpmodel", "-q"], r"NV Power Mode:\s*(.+)")
    if shutil.which("jetson_clocks"):
        show = _run(["jetson_clocks", "--show"])
        if show is not None:
            # Locked clocks report MinFreq == MaxFreq == CurrentFreq for the GPU.
            locked = re.search(r"GPU MinFreq=(\d+) MaxFreq=(\d+) CurrentFreq=(\d+)", show)
            state["jetson_clocks"] = (
                "locked" if locked and len(set(locked.groups())) == 1 else "not locked" if locked else "unknown"
            )
    return state


def _run(command: List[str]) -> Optional[str]:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def _first_line(command: List[str], pattern: str) -> Optional[str]:
    output = _run(command)
    match = re.search(pattern, output or "")
    return match.group(1).strip() if match else None


def jtop_sample(power: Dict[str, Any], temperature: Dict[str, Any], time_s: float) -> TegrastatsSample:
    """A jtop reading (jetson-stats 4.x: `jetson.power`, `jetson.temperature`) as a sample."""
    sample = TegrastatsSample(time_s=time_s)
    for name, rail in (power.get("rail") or {}).items():
        if isinstance(rail, dict) and "power" in rail:
            sample.rails_mw[name] = float(rail["power"])
    for name, sensor in (temperature or {}).items():
        online = isinstance(sensor, dict) and sensor.get("online", True) and "temp" in sensor
        if online and float(sensor["temp"]) > OFFLINE_SENSOR_C:
            sample.temperatures_c[name] = float(sensor["temp"])
    return sample


class JtopSampler:
    """The same samples from jtop (jetson-stats), for machines where tegrastats is not usable
    (containers with /run/jtop.sock mounted, or users without sudo)."""

    def __init__(self, interval_ms: int = 100) -> None:
        self.interval_ms = interval_ms
        self.samples: List[TegrastatsSample] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        try:
            from jtop import jtop  # noqa: F401
        except ImportError:
            self.available = False
        else:
            self.available = True

    def start(self) -> None:
        if self.available:
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()

    def _read(self) -> None:
        from jtop import jtop

        with jtop(interval=self.interval_ms / 1000.0) as jetson:
            while jetson.ok() and not self._stop.is_set():
                self.samples.append(jtop_sample(jetson.power, jetson.temperature, time.monotonic()))

    def stop(self) -> List[TegrastatsSample]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        return self.samples
