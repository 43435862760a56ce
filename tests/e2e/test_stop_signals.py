"""The long-running commands stop on SIGTERM even when the kernel hands it to a thread other than
the main one (the signer once ignored SIGTERM in CI until it was killed)."""
import signal
import subprocess
import sys

import pytest

from tests.e2e.test_cli import ROOT, write_config
from tests.support.ports import free_port
from tests.support import signer as S
from tests.support.signals import send_to_another_thread, wait_until_catching


def test_the_signer_stops_on_a_sigterm_delivered_to_any_thread(tmp_path):
    S.make_keystore(tmp_path).close()
    signer = S.SignerProcess(tmp_path, S.raw_config(tmp_path))
    try:
        wait_until_catching(signer.process.pid, signal.SIGTERM)
        send_to_another_thread(signer.process.pid, signal.SIGTERM)
        assert signer.process.wait(timeout=10) == 0
    finally:
        signer.stop()


@pytest.mark.parametrize("command", [["scan"], ["serve"]])
def test_custody_stops_on_a_sigterm_delivered_to_any_thread(tmp_path, command):
    """scan: the job runner (threads: the ledger writer's); serve: the gRPC server (asyncio's signal handling)."""
    config = write_config(tmp_path / "custody.toml", free_port(), "sqlite:///custody.db")
    subprocess.run([sys.executable, "-m", "custody.cli", "db", "upgrade", "--config", str(config)], cwd=ROOT,
                   check=True, capture_output=True)
    process = subprocess.Popen([sys.executable, "-m", "custody.cli", *command, "--config", str(config)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_catching(process.pid, signal.SIGTERM)
        send_to_another_thread(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=15)
        assert process.returncode == 0, output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
