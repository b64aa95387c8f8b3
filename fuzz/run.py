"""Run the atheris harnesses for a fixed time each and summarise.

    python fuzz/run.py [--seconds N] [--parallel K] [NAME ...] [-- LIBFUZZER_ARGS ...]

Each harness ``fuzz/fuzz_NAME.py`` runs with ``-max_total_time=N``, reading its committed
seeds from ``fuzz/corpus/NAME/`` and writing the inputs it finds to ``fuzz/work/NAME/``
(kept between runs, ignored by git); crash inputs go to ``fuzz/artifacts/``, the full
libFuzzer output to ``fuzz/work/NAME.log``. One line per harness: executions, time, result.
The exit status is 1 if any harness found a crash, a timeout or an out-of-memory input (or
did not finish), 2 on a usage problem, else 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
HARNESSES = (
    "vmess_server",
    "vmess_client_response",
    "mux",
    "socks",
    "http",
    "control",
    "config",
    "dns",
    "geodata",
    "api",
)
#: Seconds a harness may take beyond -max_total_time (start-up, seed loading) before it is
#: killed and reported as hung.
GRACE = 120
#: libFuzzer's per-input limit: an input that runs longer is a finding (a hang).
PER_INPUT_TIMEOUT = 30

_EXECUTED = re.compile(r"stat::number_of_executed_units: (\d+)")
_STATUS = re.compile(r"^#(\d+)[:\s]", re.MULTILINE)  # "#N:" in -fork mode
_ARTIFACT = re.compile(r"Test unit written to (\S+)")
_PYTHON_EXCEPTION = re.compile(r"=== Uncaught Python exception: ===\n(.*)")
_LIBFUZZER_ERROR = re.compile(r"ERROR: libFuzzer: (.*)")


@dataclass
class Result:
    name: str
    executions: int
    seconds: float
    ok: bool
    detail: str

    def line(self) -> str:
        rate = self.executions / self.seconds if self.seconds else 0.0
        status = "ok" if self.ok else f"FAILED: {self.detail}"
        return (
            f"{self.name:<22} {self.executions:>9} execs {self.seconds:>7.1f} s "
            f"{rate:>8.0f}/s  {status}"
        )


def _command(name: str, seconds: int, extra: list[str]) -> tuple[list[str], Path]:
    seeds = FUZZ_DIR / "corpus" / name
    work = FUZZ_DIR / "work" / name
    artifacts = FUZZ_DIR / "artifacts"
    for directory in (seeds, work, artifacts):
        directory.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        str(FUZZ_DIR / f"fuzz_{name}.py"),
        f"-max_total_time={seconds}",
        f"-timeout={PER_INPUT_TIMEOUT}",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/{name}-",
        *extra,
        str(work),
        str(seeds),
    ]
    return command, FUZZ_DIR / "work" / f"{name}.log"


def _summarise(name: str, returncode: int | None, log: str, seconds: float) -> Result:
    executed = _EXECUTED.search(log)
    if executed:
        executions = int(executed.group(1))
    else:
        statuses = _STATUS.findall(log)
        executions = int(statuses[-1]) if statuses else 0
    if returncode is None:
        return Result(name, executions, seconds, False, "did not finish (killed)")
    if returncode == 0:
        return Result(name, executions, seconds, True, "")
    finding = _PYTHON_EXCEPTION.search(log) or _LIBFUZZER_ERROR.search(log)
    kind = finding.group(1).strip()[:120] if finding else f"exit status {returncode}"
    artifact = _ARTIFACT.search(log)
    where = f" -> {artifact.group(1)}" if artifact else ""
    return Result(name, executions, seconds, False, f"{kind}{where}")


def _start(name: str, seconds: int, extra: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
    command, log_path = _command(name, seconds, extra)
    log = log_path.open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=FUZZ_DIR)
    log.close()
    return process, log_path


def _wait(
    name: str, process: subprocess.Popen[bytes], log_path: Path, started: float, seconds: int
) -> Result:
    try:
        returncode: int | None = process.wait(
            timeout=max(1.0, started + seconds + GRACE - time.monotonic())
        )
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        returncode = None
    elapsed = time.monotonic() - started
    log = log_path.read_text(errors="replace")
    return _summarise(name, returncode, log, elapsed)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in args:
        cut = args.index("--")
        args, extra = args[:cut], args[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"of {', '.join(HARNESSES)}")
    parser.add_argument("--seconds", type=int, default=10, help="per harness (default 10)")
    parser.add_argument("--parallel", type=int, default=1, help="harnesses at once (default 1)")
    options = parser.parse_args(args)
    unknown = [n for n in options.names if n not in HARNESSES]
    if unknown:
        parser.error(f"unknown harness {', '.join(unknown)}; choose from {', '.join(HARNESSES)}")
    if options.seconds < 1 or options.parallel < 1:
        parser.error("--seconds and --parallel must be positive")
    if importlib.util.find_spec("atheris") is None:
        print("atheris is not installed: pip install -e '.[fuzz]'", file=sys.stderr)
        return 2
    names = options.names or list(HARNESSES)

    results: list[Result] = []
    total = time.monotonic()
    pending = list(names)
    running: list[tuple[str, subprocess.Popen[bytes], Path, float]] = []
    while pending or running:
        while pending and len(running) < options.parallel:
            name = pending.pop(0)
            process, log_path = _start(name, options.seconds, extra)
            running.append((name, process, log_path, time.monotonic()))
        name, process, log_path, started = running.pop(0)
        result = _wait(name, process, log_path, started, options.seconds)
        if not result.ok:
            result.detail += f" (log: {log_path.relative_to(FUZZ_DIR.parent)})"
        print(result.line(), flush=True)
        results.append(result)
    failed = [r.name for r in results if not r.ok]
    summary = f"{len(results)} harnesses in {time.monotonic() - total:.0f} s: "
    print(summary + (f"FAILED: {', '.join(failed)}" if failed else "all ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
