"""Local development nodes: `custody nodes up|down|status`.

Bitcoin: bcoin (npm, pinned in package-lock.json) on regtest, started through
chains/bitcoin/bcoin_regtest.js, which gives it Bitcoin Core's regtest address
prefixes. Ethereum: anvil (npm @foundry-rs/anvil-linux-amd64, pinned). Both
come from `npm ci` at the repository root; nothing else is downloaded.

Everything a node writes lives under one folder (default var/nodes/):
    <dir>/bitcoin/   data/ (the chain, LevelDB), node.log, node.json
    <dir>/ethereum/  state.json (anvil's dump on a clean stop), node.log, node.json
node.json records the pid, port and RPC URL, so `down` and `status` need
only the folder. Nodes run in their own session: they outlive the command
that started them until `down`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DIR = ROOT / "var" / "nodes"
NODE_MODULES = pathlib.Path(os.environ.get("CUSTODY_NODE_MODULES", ROOT / "node_modules"))
BCOIN_LAUNCHER = pathlib.Path(__file__).resolve().parent / "bitcoin" / "bcoin_regtest.js"
ANVIL = NODE_MODULES / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
DEFAULT_PORTS = {"bitcoin": 18443, "ethereum": 8545}
# bcoin takes any RPC user name; the password is its API key. Local regtest only.
BITCOIN_API_KEY = "custody-regtest"
KINDS = ("bitcoin", "ethereum")


class NodeStartError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class NodeStatus:
    kind: str
    running: bool
    pid: int | None = None
    port: int | None = None
    rpc_url: str | None = None
    height: int | None = None
    folder: pathlib.Path | None = None

    def render(self) -> str:
        if not self.running:
            return f"{self.kind:9} stopped"
        return f"{self.kind:9} running  pid {self.pid}  height {self.height}  rpc {self.rpc_url}  folder {self.folder}"


class Nodes:
    """Starts, stops and reports the local nodes kept under one folder."""

    def __init__(self, folder: pathlib.Path | str = DEFAULT_DIR, ports: dict[str, int] | None = None):
        self.folder = pathlib.Path(folder).resolve()
        self.ports = {**DEFAULT_PORTS, **(ports or {})}

    # -- public -----------------------------------------------------------------------
    def up(self, kinds=KINDS, *, fresh: bool = False, timeout_s: float = 30.0) -> list[NodeStatus]:
        """Starts each node that is not running already. fresh=True wipes its data first."""
        out = []
        for kind in kinds:
            current = self.status_of(kind)
            if current.running and not fresh:
                out.append(current)
                continue
            if current.running:
                self._stop(kind)
            home = self.folder / kind
            if fresh and home.exists():
                shutil.rmtree(home)
            home.mkdir(parents=True, exist_ok=True)
            out.append(self._start(kind, home, timeout_s))
        return out

    def down(self, kinds=KINDS) -> list[NodeStatus]:
        for kind in kinds:
            self._stop(kind)
        return [self.status_of(kind) for kind in kinds]

    def status(self, kinds=KINDS) -> list[NodeStatus]:
        return [self.status_of(kind) for kind in kinds]

    def status_of(self, kind: str) -> NodeStatus:
        info = self._info(kind)
        if not info or not _alive(info["pid"], info["marker"]):
            return NodeStatus(kind, False)
        height = _height(kind, info["rpc_url"])
        return NodeStatus(kind, height is not None, info["pid"], info["port"], info["rpc_url"], height,
                          self.folder / kind)

    def rpc_url(self, kind: str) -> str:
        info = self._info(kind)
        if not info:
            raise NodeStartError(f"the {kind} node under {self.folder} is not running")
        return info["rpc_url"]

    # -- starting and stopping ----------------------------------------------------------
    def _start(self, kind: str, home: pathlib.Path, timeout_s: float) -> NodeStatus:
        port = self.ports[kind]
        # Another program on the port (someone else's anvil) would answer our health check while
        # our node exits: everything after would run against a node that is not ours.
        if _listening(port):
            raise NodeStartError(f"port {port} is in use by another program; stop it or choose another "
                                 f"port (--{kind}-port)")
        if kind == "bitcoin":
            if not (NODE_MODULES / "bcoin").is_dir():
                raise NodeStartError(f"bcoin is not installed in {NODE_MODULES}; run `npm ci` (or `make tools`)")
            command = ["node", str(BCOIN_LAUNCHER), "--port", str(port), "--api-key", BITCOIN_API_KEY,
                       "--prefix", str(home / "data"), "--node-modules", str(NODE_MODULES)]
            rpc_url = f"http://custody:{BITCOIN_API_KEY}@127.0.0.1:{port}/"
            marker = str(BCOIN_LAUNCHER)
        elif kind == "ethereum":
            if not ANVIL.exists():
                raise NodeStartError(f"anvil is not installed at {ANVIL}; run `npm ci` (or `make tools`)")
            command = [str(ANVIL), "--host", "127.0.0.1", "--port", str(port), "--state", str(home / "state.json")]
            rpc_url = f"http://127.0.0.1:{port}/"
            marker = str(ANVIL)
        else:
            raise ValueError(f"unknown node kind {kind!r}; expected one of {', '.join(KINDS)}")
        log = open(home / "node.log", "ab")
        try:
            process = subprocess.Popen(command, cwd=home, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        (home / "node.json").write_text(json.dumps(
            {"pid": process.pid, "port": port, "rpc_url": rpc_url, "marker": marker}))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise NodeStartError(f"the {kind} node exited with code {process.returncode}; "
                                     f"see {home / 'node.log'}")
            height = _height(kind, rpc_url)
            if height is not None:
                return NodeStatus(kind, True, process.pid, port, rpc_url, height, home)
            time.sleep(0.1)
        _terminate(process.pid)
        raise NodeStartError(f"the {kind} node did not answer on port {port} within {timeout_s:.0f}s; "
                             f"see {home / 'node.log'}")

    def _stop(self, kind: str, timeout_s: float = 15.0) -> None:
        info = self._info(kind)
        if info and _alive(info["pid"], info["marker"]):
            _terminate(info["pid"], timeout_s)
        if info:
            (self.folder / kind / "node.json").unlink(missing_ok=True)

    def _info(self, kind: str) -> dict | None:
        path = self.folder / kind / "node.json"
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int, marker: str) -> bool:
    """True if pid runs our node (not some later process that reused the pid)."""
    try:
        cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    if stat.rsplit(")", 1)[1].split()[0] == "Z":  # a zombie is not running
        return False
    return marker.encode() in cmdline


def _terminate(pid: int, timeout_s: float = 15.0) -> None:
    """SIGTERM (the nodes close their databases cleanly), then SIGKILL if needed."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)  # our own child: reap it
            if done:
                return
        except ChildProcessError:
            if not pathlib.Path(f"/proc/{pid}").exists():
                return
            try:
                if pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    return
            except FileNotFoundError:
                return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _height(kind: str, rpc_url: str) -> int | None:
    """The node's block height, or None if it does not answer (yet)."""
    method = "getblockcount" if kind == "bitcoin" else "eth_blockNumber"
    try:
        result = json_rpc(rpc_url, method, [], timeout_s=2)
    except (OSError, ValueError, urllib.error.URLError):
        return None
    return int(result, 16) if isinstance(result, str) else int(result)


def json_rpc(rpc_url: str, method: str, params: list, timeout_s: float = 10):
    """A bare JSON-RPC call for status checks (the plugins use their own clients)."""
    import base64
    from urllib.parse import urlsplit

    parts = urlsplit(rpc_url)
    url = f"{parts.scheme}://{parts.hostname}:{parts.port}{parts.path or '/'}"
    request = urllib.request.Request(url, data=json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode(),
        headers={"Content-Type": "application/json"})
    if parts.username is not None:
        token = base64.b64encode(f"{parts.username}:{parts.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        body = json.loads(response.read())
    if body.get("error"):
        raise ValueError(f"{method}: {body['error']}")
    return body["result"]
