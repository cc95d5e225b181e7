"""The supervisor with real processes: env, logs, restarts with back-off, graceful stop."""

import asyncio
import os
import time

from kubelab.runtime.process import ContainerEvent, ProcessSpec, RestartConfig, Supervisor, base_env
from tests.helpers import wait_until


class Recorder:
    def __init__(self):
        self.events: list[ContainerEvent] = []
        self.changed = asyncio.Event()

    def __call__(self, ev):
        self.events.append(ev)
        self.changed.set()

    async def wait_for(self, pred, timeout=10):
        async with asyncio.timeout(timeout):
            while not pred(self.events):
                self.changed.clear()
                await self.changed.wait()

    def kinds(self):
        return [e.kind for e in self.events]


def spec(tmp_path, script, **env):
    return ProcessSpec(("sh", "-c", script), base_env(env), tmp_path / "logs")


async def test_runs_with_env_and_logs_per_run(tmp_path):
    rec = Recorder()
    sup = Supervisor(spec(tmp_path, 'echo "ip=$POD_IP"; exit 0', POD_IP="127.55.3.3"),
                     RestartConfig("Never"), rec)
    sup.start()
    await rec.wait_for(lambda evs: any(e.kind == "exited" for e in evs))
    ev = rec.events[-1]
    assert (ev.exit_code, ev.reason, ev.restart_count) == (0, "Completed", 0)
    assert (tmp_path / "logs" / "0.log").read_text() == "ip=127.55.3.3\n"
    await sup.stop(1)


async def test_crash_loop_backs_off_and_counts_restarts(tmp_path):
    rec = Recorder()
    sup = Supervisor(spec(tmp_path, 'echo run; exit 3'), RestartConfig("Always", backoff_base=0.05, backoff_cap=0.1),
                     rec)
    sup.start()
    await rec.wait_for(lambda evs: sum(e.kind == "waiting" for e in evs) >= 3)
    await sup.stop(1)
    waits = [e for e in rec.events if e.kind == "waiting"]
    assert [w.delay for w in waits[:3]] == [0.05, 0.1, 0.1]  # first restart immediate, then doubling, capped
    assert all(w.reason == "CrashLoopBackOff" for w in waits)
    starts = [e.restart_count for e in rec.events if e.kind == "started"]
    assert starts[:4] == [0, 1, 2, 3]
    exits = [e for e in rec.events if e.kind == "exited"]
    assert exits[0].exit_code == 3 and exits[0].reason == "Error"
    assert (tmp_path / "logs" / "1.log").read_text() == "run\n"


async def test_on_failure_stops_after_success(tmp_path):
    rec = Recorder()
    marker = tmp_path / "once"
    script = f'if [ -e {marker} ]; then exit 0; fi; touch {marker}; exit 1'
    sup = Supervisor(spec(tmp_path, script), RestartConfig("OnFailure", backoff_base=0.01), rec)
    sup.start()
    await rec.wait_for(lambda evs: [e.exit_code for e in evs if e.kind == "exited"] == [1, 0])
    await asyncio.wait_for(sup._task, 5)  # no third run: the task ends by itself
    assert rec.kinds().count("started") == 2


async def test_missing_executable_is_a_start_error(tmp_path):
    rec = Recorder()
    sup = Supervisor(ProcessSpec(("kl-no-such-binary",), base_env({}), tmp_path / "l"), RestartConfig("Never"), rec)
    sup.start()
    await rec.wait_for(lambda evs: evs and evs[-1].kind == "failed")
    assert rec.events[-1].reason == "StartError"
    assert 'exec: "kl-no-such-binary": executable file not found in $PATH' == rec.events[-1].message
    await sup.stop(1)


async def test_graceful_stop_sigterm_then_sigkill(tmp_path):
    # a container that ignores SIGTERM (and a child in its process group) gets SIGKILL after the grace
    rec = Recorder()
    script = "trap '' TERM; sleep 30 & echo started; wait"
    sup = Supervisor(spec(tmp_path, script), RestartConfig("Always"), rec)
    sup.start()
    await rec.wait_for(lambda evs: "started" in [e.kind for e in evs])
    log = tmp_path / "logs" / "0.log"
    await wait_until(lambda: "started" in log.read_text(), timeout=5, what="'started' in the log")
    pid = sup.pid
    t0 = time.monotonic()
    await sup.stop(0.3)
    assert 0.25 < time.monotonic() - t0 < 5

    def group_gone() -> bool:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        return False

    # the whole group is gone (once init reaps the orphaned child)
    await wait_until(group_gone, timeout=5, what=f"process group {pid} gone", interval=0.02)
    assert "started" in rec.kinds() and rec.kinds().count("started") == 1  # no restart after stop


async def test_cooperative_stop_is_quick(tmp_path):
    rec = Recorder()
    sup = Supervisor(spec(tmp_path, "exec sleep 30"), RestartConfig("Always"), rec)
    sup.start()
    await rec.wait_for(lambda evs: "started" in [e.kind for e in evs])
    t0 = time.monotonic()
    await sup.stop(10)
    assert time.monotonic() - t0 < 5


async def test_restart_now_restarts_per_policy(tmp_path):
    rec = Recorder()
    sup = Supervisor(spec(tmp_path, "exec sleep 30"), RestartConfig("Always", backoff_base=0.01), rec)
    sup.start()
    await rec.wait_for(lambda evs: "started" in [e.kind for e in evs])
    await sup.restart_now("liveness probe failed")
    await rec.wait_for(lambda evs: [e.kind for e in evs].count("started") == 2)
    assert sup.restart_count == 1
    killed = next(e for e in rec.events if e.kind == "exited")
    assert killed.exit_code == 143 and killed.signal == 15
    await sup.stop(1)
