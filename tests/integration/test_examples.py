"""Every example's walkthrough, run against a fresh lab: the examples can never rot.

README format (see examples/README.md): each ```sh block is run with bash from the repo
root; the ```text block right after it is the output a user sees (stdout and stderr),
compared line by line with runs of blanks counted as one (table columns widen with their
values), and ``...`` matching any text (``127.96....`` is ``127.96.`` and then anything).
```sh netns blocks need the netns lab and are skipped here; ```console blocks are never
run. The lab runs with its own API and DNS ports and its own addresses (pods, services,
LB pool, node IP, all in 127.55.0.0/16), substituted into the commands (``-p 5353``,
``http://127.0.0.1:``) and the expected output (``127.244.``, ``127.96.``, ``127.240.0``),
so that it never collides with another lab on the machine.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import KUBELAB, wait_until_sync

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
HOST = "127.0.0.1"
# The test lab lives in 127.55.0.0/16 (the runtime's test range), so that it never
# collides with another lab on this machine: README address -> test lab address.
NODE_IP = "127.55.200.1"
LAB_FLAGS = ["--pod-cidr", "127.55.0.0/18", "--service-cidr", "127.55.128.0/18", "--lb-pool", "127.55.250.0/24",
             "--node-ip", NODE_IP]
OUTPUT_REWRITES = (("127.244.", "127.55."), ("127.96.", "127.55."), ("127.240.0", "127.55.250"))
COMMAND_REWRITES = (("http://127.0.0.1:", f"http://{NODE_IP}:"),)

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.S | re.M)


@dataclass(frozen=True)
class Step:
    command: str
    expected: str | None  # None: no output block; output not checked
    mode: str  # "" (every lab) or "netns"
    line: int


def parse_walkthrough(text: str) -> list[Step]:
    """The (command, expected output) pairs of one README."""
    steps: list[Step] = []
    blocks = [(m.group(1).strip(), m.group(2), m.start(), m.end()) for m in FENCE.finditer(text)]
    for i, (info, body, start, end) in enumerate(blocks):
        words = info.split()
        if not words or words[0] != "sh":
            continue
        expected = None
        if i + 1 < len(blocks) and blocks[i + 1][0] == "text" and not text[end:blocks[i + 1][2]].strip():
            expected = blocks[i + 1][1]
        steps.append(Step(body, expected, "netns" if "netns" in words[1:] else "", text.count("\n", 0, start) + 1))
    return steps


def matches(expected: str, actual: str) -> tuple[bool, str]:
    def norm(line: str) -> str:  # table column widths depend on the values: compare words
        return " ".join(line.split())

    want = [norm(line) for line in expected.rstrip("\n").split("\n")]
    got = [norm(line) for line in actual.rstrip("\n").split("\n")] if actual.strip() else []
    if want == [""]:
        want = []
    if len(want) != len(got):
        return False, f"expected {len(want)} lines, got {len(got)}"
    for n, (w, g) in enumerate(zip(want, got, strict=True), 1):
        pattern = "".join(  # a run of dots ending in "..." is literal dots, then the wildcard
            re.escape(part[:-3]) + ".*" if re.fullmatch(r"\.{3,}", part) else re.escape(part)
            for part in re.split(r"(\.{3,})", w))
        if not re.fullmatch(pattern, g):
            return False, f"line {n}: expected {w!r}, got {g!r}"
    return True, ""


def test_matcher_and_parser():
    assert matches("pod/my-app-... condition met\n", "pod/my-app-7d9-abc condition met\n")[0]
    assert not matches("3\n", "2\n")[0]
    assert not matches("a\nb\n", "a\n")[0]
    assert matches("NAME   IP\nweb    127.96....\n", "NAME      IP\nweb       127.96.3.4\n")[0]
    steps = parse_walkthrough("x\n```sh\necho hi\n```\n\n```text\nhi\n```\n```sh netns\nid\n```\n```console\n$ no\n```\n")
    assert [(s.command, s.expected, s.mode) for s in steps] == [("echo hi\n", "hi\n", ""), ("id\n", None, "netns")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_ready(api: str, proc: subprocess.Popen, timeout: float = 20) -> None:
    import urllib.error
    import urllib.request

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"kubelab up exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{api}/readyz", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    wait_until_sync(ready, timeout, "kubelab up to become ready", interval=0.1)


@pytest.fixture
def lab(tmp_path):
    api_port, dns_port = free_port(), free_port()
    api = f"http://{HOST}:{api_port}"
    log = open(tmp_path / "lab.log", "wb")
    proc = subprocess.Popen(
        [KUBELAB, "up", "--state-dir", str(tmp_path / "state"), "--api-addr", f"{HOST}:{api_port}",
         "--dns-addr", f"{HOST}:{dns_port}", "--dns-upstream", "none", *LAB_FLAGS],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(api, proc)
        yield {"api": api, "dns_port": dns_port, "state": tmp_path / "state", "log": tmp_path / "lab.log"}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


EXAMPLE_DIRS = sorted(p.parent.name for p in EXAMPLES.glob("*/README.md"))


@pytest.mark.parametrize("example", EXAMPLE_DIRS)
def test_walkthrough(example, lab):
    missing = [tool for tool in ("dig", "curl") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the walkthroughs use {' and '.join(missing)} (apt-get install dnsutils curl)")
    text = (EXAMPLES / example / "README.md").read_text()
    steps = [s for s in parse_walkthrough(text) if s.mode == ""]
    assert steps, f"examples/{example}/README.md has no ```sh steps"
    env = {**os.environ, "KUBELAB_SERVER": lab["api"], "KUBELAB_STATE_DIR": str(lab["state"]),
           "PATH": f"{Path(KUBELAB).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for step in steps:
        command = step.command.replace("-p 5353", f"-p {lab['dns_port']}")
        for readme, ours in COMMAND_REWRITES:
            command = command.replace(readme, ours)
        proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=90)
        where = f"examples/{example}/README.md:{step.line}"
        if step.expected is None:
            assert proc.returncode == 0, f"{where}: `{step.command.strip()}` failed:\n{proc.stdout}"
            continue
        expected = step.expected
        for readme, ours in OUTPUT_REWRITES:
            expected = expected.replace(readme, ours)
        ok, why = matches(expected, proc.stdout)
        assert ok, (f"{where}: `{step.command.strip()}`: {why}\n--- expected\n{expected}--- got "
                    f"(exit {proc.returncode})\n{proc.stdout}--- lab log tail\n"
                    + lab["log"].read_text(errors="replace")[-2000:])
