"""Client-side load balancing: target parsing, and requests spread over (and failing over between) real servers."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest
from server_process import ServerProcess, start_server

from clients.address import Address, AddressError, Target, parse_target, with_default_port
from clients.channel import IDEMPOTENT_METHODS, SERVICE_CONFIG, channel_args, dial_target
from clients.errors import UnreachableError
from clients.metrics import default_metrics_url, parse_metrics

ROOT = Path(__file__).resolve().parent.parent

# ---- parsing and dialling (no server) ----


@pytest.mark.parametrize(("text", "expected"), [
    ("localhost", "localhost:8001"),
    ("10.0.0.1:9000", "10.0.0.1:9000"),
    ("host1:8001,host2:8001", "host1:8001,host2:8001"),
    ("host1, host2:9000 ,10.0.0.3", "host1:8001,host2:9000,10.0.0.3:8001"),
    ("[::1],[fe80::1]:9000,::2", "[::1]:8001,[fe80::1]:9000,[::2]:8001"),
    ("a.example:", "a.example:8001"),
    ("dns:///slimserve.slimserve.svc:8001", "dns:///slimserve.slimserve.svc:8001"),
    ("dns:///slimserve.slimserve.svc", "dns:///slimserve.slimserve.svc:8001"),
    ("dns:slimserve:9000", "dns:///slimserve:9000"),
    ("dns://10.0.0.10/slimserve", "dns://10.0.0.10/slimserve:8001"),
    ("dns:///[::1]", "dns:///[::1]:8001"),
])
def test_targets_get_default_ports(text: str, expected: str) -> None:
    assert str(parse_target(text)) == expected
    assert str(parse_target(expected)) == expected  # what the CLI hands the load workers parses the same


def test_target_keeps_each_address() -> None:
    target = parse_target("h1,[::1]:9,10.0.0.3:7")
    assert target == Target((Address("h1", 8001), Address("::1", 9), Address("10.0.0.3", 7)))
    assert parse_target("dns:///svc").dns == "dns:///"


@pytest.mark.parametrize(("text", "says"), [
    ("", "not a server address"),
    ("h1,,h2", "not a server address"),
    ("h1,", "not a server address"),
    ("h1:http", "port 'http'"),
    ("h1:8001,h2:70000", "port '70000'"),
    ("h1:0", "port '0'"),
    ("http://h1:8001", "no scheme"),
    ("h1:8001,dns:///h2", "no scheme"),
    ("[::1", "brackets"),
    ("[::1]8001", "brackets"),
    ("[zz::1]:8001", "not an IPv6 address"),
    ("1::2::3", "not an IPv6 address"),
    ("300.1.1.1:8001", "not an IPv4 address"),
    ("my host:8001", "not a host name"),
    (":8001", "host is missing"),
    ("dns://10.0.0.10", "three slashes"),
    ("dns:///", "name is missing"),
    ("dns:///h1,h2", "names one host"),
])
def test_bad_targets_say_why_in_one_line(text: str, says: str) -> None:
    with pytest.raises(AddressError) as caught:
        parse_target(text)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_with_default_port_is_one_address() -> None:
    assert with_default_port("::1") == "[::1]:8001"
    with pytest.raises(AddressError):
        with_default_port("h1,h2")


def test_ip_literals_dial_as_one_ipv4_or_ipv6_target() -> None:
    assert dial_target(parse_target("127.0.0.1:1,127.0.0.2:2")) == ("ipv4:127.0.0.1:1,127.0.0.2:2", "127.0.0.1:1")
    assert dial_target(parse_target("[::1]:1,[::2]")) == ("ipv6:[::1]:1,[::2]:8001", "[::1]:1")
    # gRPC takes one family per target: IPv4 joins IPv6 as IPv4-mapped.
    assert dial_target(parse_target("[::1]:1,127.0.0.1:2")) == ("ipv6:[::1]:1,[::ffff:127.0.0.1]:2", "[::1]:1")


def test_one_address_or_a_dns_name_is_left_to_grpc() -> None:
    assert dial_target(parse_target("localhost")) == ("localhost:8001", None)
    assert dial_target(parse_target("dns:///svc.ns:9000")) == ("dns:///svc.ns:9000", None)


def _fake_dns(table: dict[str, list[str]]) -> Any:
    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
                for ip in table[host]]
    return getaddrinfo


def test_names_are_resolved_to_every_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _fake_dns({"pod-a": ["10.0.0.1"], "svc": ["10.0.0.2", "10.0.0.1"]}))
    assert dial_target(parse_target("pod-a:1,svc:1,10.0.0.9:2")) == (
        "ipv4:10.0.0.1:1,10.0.0.2:1,10.0.0.9:2", "pod-a:1"  # 10.0.0.1:1 once; the names' authority
    )


def test_a_name_that_does_not_resolve_is_skipped_unless_all_are(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _fake_dns({"up": ["10.0.0.1", "fd00::1"]}))
    assert dial_target(parse_target("gone:1,up:2")) == ("ipv6:[::ffff:10.0.0.1]:2,[fd00::1]:2", "up:2")
    with pytest.raises(UnreachableError) as caught:
        dial_target(parse_target("gone:1,gone2:2"))
    assert "cannot resolve gone" in str(caught.value) and "cannot resolve gone2" in str(caught.value)


def test_service_config_balances_health_checks_and_retries_idempotent_calls() -> None:
    args = dict(channel_args("h1:8001"))
    assert args["grpc.lb_policy_name"] == "round_robin" and args["grpc.default_authority"] == "h1:8001"
    config = json.loads(args["grpc.service_config"])
    assert config == SERVICE_CONFIG
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["healthCheckConfig"] == {"serviceName": ""}
    (method,) = config["methodConfig"]
    assert method["retryPolicy"]["maxAttempts"] == 3
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    names = {n["method"] for n in method["name"]}
    assert names == set(IDEMPOTENT_METHODS) and "ModelInfer" in names
    assert not names & {"RepositoryModelLoad", "RepositoryModelUnload", "ModelStreamInfer"}
    assert args["grpc.per_rpc_retry_buffer_size"] >= 4 * 1024 * 1024  # a batch of inputs stays retryable
    assert "grpc.default_authority" not in dict(channel_args())


@pytest.mark.parametrize(("url", "expected"), [
    ("127.0.0.1:8001,127.0.0.2:8001", "http://127.0.0.1:8002/metrics"),
    ("[::1]:8001,127.0.0.1", "http://[::1]:8002/metrics"),
    ("dns:///slimserve.ns.svc:8001", "http://slimserve.ns.svc:8002/metrics"),
])
def test_default_metrics_url_is_the_first_hosts(url: str, expected: str) -> None:
    assert default_metrics_url(url) == expected


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clients", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize(("url", "says"), [
    ("h1:8001,,h2", "'h1:8001,,h2' is not a server address"),
    ("h1:port", "'h1:port': the port 'port'"),
    ("http://h1:8001", "no scheme"),
    ("dns:///a,b", "names one host"),
])
def test_cli_bad_url_is_a_usage_error_naming_the_flag(url: str, says: str) -> None:
    done = _cli("infer", "--url", url, "--model", "tiny")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]  # argparse's usage line comes first, as for every bad flag
    assert "argument --url:" in last and says in last, done.stderr


# ---- against real servers ----

# Runs in a child process: tritonclient's generated protos collide with the server's in one process.
# Reads commands from stdin: `send N` sends N requests; `stream N` sends until the next stdin line, then N
# more. Each answers with one JSON line: requests answered OK, and the errors of any that failed.
DRIVER = r"""
import json, sys, threading
import numpy as np
from clients.client import Client
from clients.errors import ClientError

LIMIT = 100_000  # no command runs unbounded
x = np.zeros((1, 8), np.float32)
with Client(sys.argv[1], timeout=30) as client:
    def send(n, until=None):
        ok, failed = 0, []
        left = None if until is not None else n  # None: streaming, until told
        for i in range(LIMIT):
            if left is not None:
                if left == 0:
                    break
                left -= 1
            try:
                client.infer("tiny", {"input": x})
                ok += 1
            except ClientError as exc:
                failed.append(str(exc))
            if i == 0 and until is not None:
                print("streaming", flush=True)
            if left is None and until.is_set():
                left = n
        return ok, failed
    for line in sys.stdin:
        command, count = line.split()
        if command == "send":
            ok, failed = send(int(count))
        else:
            stop = threading.Event()
            threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
            ok, failed = send(int(count), until=stop)
        print(json.dumps({"ok": ok, "failed": failed}), flush=True)
"""


class Driver:
    """A child process holding one `Client` (one channel) to `target`, sending when told."""

    def __init__(self, target: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", DRIVER, target], cwd=ROOT, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)

    def _line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"driver exited with {self.process.wait()}"
        return line

    def tell(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def send(self, n: int) -> dict[str, Any]:
        self.tell(f"send {n}")
        return json.loads(self._line())

    def stream(self, then: int) -> None:
        """Start sending without pause; returns once the first request is answered (or failed)."""
        self.tell(f"stream {then}")
        assert self._line().strip() == "streaming"

    def finish_stream(self) -> dict[str, Any]:
        self.tell("")
        return json.loads(self._line())

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(30)


def answered(server: ServerProcess) -> int:
    """Inference requests the server answered OK, all variants of the tiny model."""
    return int(parse_metrics(server.metrics()).value("slimserve_requests_total", model="tiny", code="OK") or 0)


def warm_up(driver: Driver, servers: list[ServerProcess], limit: int = 200) -> None:
    """Send one request at a time until every server has answered one: then each has a READY connection
    in the driver's channel, and round_robin alternates among them from the next request on."""
    before = [answered(s) for s in servers]
    for _ in range(limit):
        assert driver.send(1)["failed"] == []
        if all(answered(s) > b for s, b in zip(servers, before)):
            return
    pytest.fail(f"after {limit} requests some server had none: {[answered(s) - b for s, b in zip(servers, before)]}")


def start_pair(repo: Path) -> list[ServerProcess]:
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda _: start_server(repo), range(2)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pair(tiny_repo: Path) -> Iterator[list[ServerProcess]]:
    servers = start_pair(tiny_repo)
    yield servers
    for s in servers:
        s.stop()


@pytest.fixture()
def doomed_pair(tiny_repo: Path) -> Iterator[list[ServerProcess]]:
    """Two servers for a test that stops one."""
    servers = start_pair(tiny_repo)
    yield servers
    for s in servers:
        s.stop()


@pytest.fixture()
def driver_factory() -> Iterator[Any]:
    drivers: list[Driver] = []

    def make(target: str) -> Driver:
        drivers.append(Driver(target))
        return drivers[-1]
    yield make
    for d in drivers:
        d.close()


def _share(deltas: list[int]) -> list[float]:
    return [d / sum(deltas) for d in deltas]


def test_client_spreads_requests_over_two_servers(pair: list[ServerProcess], driver_factory: Any) -> None:
    driver = driver_factory(",".join(s.url for s in pair))
    warm_up(driver, pair)
    before = [answered(s) for s in pair]
    result = driver.send(200)
    assert result == {"ok": 200, "failed": []}
    deltas = [answered(s) - b for s, b in zip(pair, before)]
    assert sum(deltas) == 200
    assert all(0.4 <= share <= 0.6 for share in _share(deltas)), deltas


def test_cli_load_spreads_requests_over_two_servers(pair: list[ServerProcess]) -> None:
    before = [answered(s) for s in pair]
    done = _cli("load", "--url", ",".join(s.url for s in pair), "--model", "tiny", "--requests", "200",
                "--concurrency", "2")
    assert done.returncode == 0, done.stderr
    assert "requests: 200 in" in done.stdout and "errors: 0 " in done.stdout, done.stdout
    deltas = [answered(s) - b for s, b in zip(pair, before)]
    assert sum(deltas) == 200
    assert all(0.4 <= share <= 0.6 for share in _share(deltas)), deltas


def test_dns_target_resolves_localhost(pair: list[ServerProcess], driver_factory: Any) -> None:
    """gRPC's dns resolver may give ::1 beside 127.0.0.1; the server listens on 127.0.0.1 only, and
    round_robin leaves the address that refuses out."""
    server = pair[0]
    before = answered(server)
    driver = driver_factory(f"dns:///localhost:{server.grpc_port}")
    assert driver.send(30) == {"ok": 30, "failed": []}
    assert answered(server) - before == 30
    done = _cli("infer", "--url", f"dns:///localhost:{server.grpc_port}", "--model", "tiny")
    assert done.returncode == 0 and "served by variant" in done.stdout, done.stderr


def test_addresses_that_refuse_are_skipped(pair: list[ServerProcess], driver_factory: Any) -> None:
    """A replica that is down (a closed port, an IPv6 loopback nothing listens on) takes no requests."""
    server = pair[0]
    before = answered(server)
    driver = driver_factory(f"127.0.0.1:{free_port()},[::1]:{server.grpc_port},{server.url}")
    assert driver.send(50) == {"ok": 50, "failed": []}
    assert answered(server) - before == 50


def test_cli_says_in_one_line_when_no_replica_answers() -> None:
    url = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    done = _cli("infer", "--url", url, "--model", "tiny")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert "could not reach" in lines[0] and url in lines[0]


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_no_request_fails_while_a_replica_stops(doomed_pair: list[ServerProcess], driver_factory: Any,
                                                how: str) -> None:
    """One replica stops while requests stream without pause; each is answered, by the other if need be.

    SIGTERM: the server turns NOT_SERVING and refuses new calls with UNAVAILABLE while it drains; health
    checking takes it out of the rotation, and a call already on its way is retried on the other.
    SIGKILL: connections reset mid-call; the retry policy sends those calls again.
    """
    staying, stopping = doomed_pair
    driver = driver_factory(f"{staying.url},{stopping.url}")
    warm_up(driver, doomed_pair)
    driver.stream(then=200)
    if how == "SIGTERM":
        assert stopping.stop() == 0  # drained and exited by itself
    else:
        stopping.process.kill()
        stopping.process.wait(30)
    streamed = driver.finish_stream()  # requests went on throughout the stop, and 200 after it
    assert streamed["failed"] == [] and streamed["ok"] >= 201, streamed["failed"][:3]
    before = answered(staying)
    assert driver.send(200) == {"ok": 200, "failed": []}
    assert answered(staying) - before == 200


# The channel settings under TLS and bearer tokens, through tritonclient (our `Client` has neither option).
TLS_DRIVER = r"""
import json, sys
import numpy as np
import tritonclient.grpc as triton
from clients.address import parse_target
from clients.channel import channel_args, dial_target
from clients.client import _triton_defaults

url, ca, token = sys.argv[1:4]
dial, authority = dial_target(parse_target(url))
client = triton.InferenceServerClient(dial, ssl=True, root_certificates=ca,
                                      channel_args=_triton_defaults() + channel_args(authority))
ok = 0
for _ in range(100):
    tensor = triton.InferInput("input", [1, 8], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 8), np.float32))
    client.infer("tiny", [tensor], headers={"authorization": f"Bearer {token}"})
    ok += 1
print(json.dumps({"ok": ok}))
"""


def test_tls_and_tokens_work_with_several_addresses(tiny_repo: Path, tmp_path: Path) -> None:
    """Several names dial as `ipv4:` IPs; the certificate is checked against the first name typed (the
    authority), and health checks pass without the token (the server leaves grpc.health.v1 open)."""
    from certs import make_ca, make_leaf

    ca, ca_name, ca_key = make_ca(tmp_path, "ca")
    pem = make_leaf(tmp_path, "server", ca_name, ca_key, server=True)  # for localhost and 127.0.0.1
    tls = ("--tls-cert", str(pem.cert), "--tls-key", str(pem.key))
    with ThreadPoolExecutor(2) as pool:
        servers = list(pool.map(lambda _: start_server(tiny_repo, *tls, env={"SLIMSERVE_AUTH_TOKEN": "t0ken"}),
                                range(2)))
    try:
        before = [answered(s) for s in servers]
        url = ",".join(f"localhost:{s.grpc_port}" for s in servers)
        done = subprocess.run([sys.executable, "-c", TLS_DRIVER, url, str(ca.cert), "t0ken"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and json.loads(done.stdout) == {"ok": 100}, done.stderr[-2000:]
        deltas = [answered(s) - b for s, b in zip(servers, before)]
        assert sum(deltas) == 100 and min(deltas) > 0, deltas  # both replicas in the rotation
    finally:
        for s in servers:
            s.stop()
