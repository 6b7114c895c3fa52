"""The local platform's watchdog, `python -m sluice.common.supervise`, left by `sluice up`.

Like a service manager, it restarts only the component that died, from the
spec recorded in <state dir>/platform.json (same ports, same environment),
with back-off: at once the first time, then 1, 2, 4 ... up to 30 s between
attempts. A component that stays up STABLE_AFTER_S is forgiven its past
deaths; one that died CRASH_LOOP_FAILURES times in a row without that is
reported as a crash loop by `sluice status` (and still retried every 30 s).
Restart counts and the last error go to platform.json; events to
logs/supervisor.log.

Every `cert_check_interval_s` it also renews the platform CA's leaves that near
their end (sluice.common.pki.RENEW_BEFORE) and restarts the one component that holds
each in memory (Envoy its xDS/stats client certificate, the traffic controller and
the metrics service their servers'), so a platform that stays up for years never
runs on an expired certificate; the gateway's scoring certificate needs no restart
(the traffic controller renews it and sends it over SDS).

Apart from that it never stops a component: on SIGTERM (`sluice down`) it records
its last state and exits, and `sluice down` stops the components. It does not restart
itself; `sluice status` says when it is gone and `sluice up` starts it again.
Under systemd, `sluice up --foreground` runs this loop in the unit's own
process instead (deploy/systemd/sluice.service).
"""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime
from types import FrameType

import psutil

from sluice.common.pki import ALS_SERVER, XDS_SERVER, PlatformPki, expires_soon
from sluice.common.platform import (
    CRASH_LOOP_FAILURES,
    GATEWAY_NODE,
    LocalPlatform,
    PlatformState,
)
from sluice.common.settings import Settings
from sluice.common.supervisor import (
    ComponentError,
    RunningProcess,
    Supervisor,
    is_alive,
    reap,
    stop_process,
)

STABLE_AFTER_S = 30.0
MAX_BACKOFF_S = 30.0
POLL_S = 0.2


def backoff_s(failures: int) -> float:
    """Wait before the attempt after `failures` deaths in a row: 0, 1, 2, 4, ... 30 s."""
    return 0.0 if failures <= 1 else min(MAX_BACKOFF_S, 2.0 ** (failures - 2))


def log(message: str) -> None:
    print(f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%S} {message}", flush=True)


# The platform CA leaf each component reads at its start: (name, server?).
CERTIFICATE_HOLDERS = {
    "envoy": (GATEWAY_NODE, False),  # its xDS and stats client, named in its bootstrap
    "traffic": (XDS_SERVER, True),
    "metrics": (ALS_SERVER, True),
}


class Watchdog:
    def __init__(self, platform: LocalPlatform):
        self.platform = platform
        self.supervisor = Supervisor(platform.state_dir / "logs")
        self._stopping = False
        self._next_attempt: dict[str, float] = {}
        self._cert_check_interval_s = platform.settings.cert_check_interval_s
        self._next_cert_check = time.monotonic() + self._cert_check_interval_s

    def stop(self, signum: int, _frame: FrameType | None) -> None:
        log(f"received {signal.Signals(signum).name}: leaving the components running")
        self._stopping = True

    def register(self) -> PlatformState | None:
        state = self.platform.load_state()
        if state is None:
            return None
        me = psutil.Process()
        state.supervisor = RunningProcess(
            name="supervisor",
            pid=me.pid,
            create_time=me.create_time(),
            log_path=self.platform.state_dir / "logs" / "supervisor.log",
            stop_timeout_s=70.0,  # a restart in progress finishes first
        )
        self.platform.save_state(state)
        return state

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        state = self.register()
        if state is None:
            log("no platform.json: nothing to supervise")
            return 1
        log(f"supervising {', '.join(p.name for p in state.processes)}")
        while not self._stopping:
            try:
                state = self.check(state)
                if time.monotonic() >= self._next_cert_check:
                    self._next_cert_check = time.monotonic() + self._cert_check_interval_s
                    state = self.renew_certificates(state)
            except OSError as exc:  # a full disk (platform.json), say: the next pass tries again
                log(f"supervision pass failed: {exc}; trying again")
            time.sleep(POLL_S)
        self.platform.save_state(state)
        return 0

    def check(self, state: PlatformState) -> PlatformState:
        """One pass: restart what died (when its back-off allows); forgive what stays up."""
        changed = False
        now = time.time()
        for index, proc in enumerate(state.processes):
            if self._stopping:
                break
            if is_alive(proc):
                if proc.failures and now - proc.create_time > STABLE_AFTER_S:
                    state.processes[index] = proc.model_copy(update={"failures": 0})
                    changed = True
                continue
            reap(proc.pid)
            if proc.name not in self._next_attempt:  # just noticed: schedule the attempt
                failures = proc.failures + 1
                proc = proc.model_copy(
                    update={"failures": failures, "last_error": proc.last_error or "exited"}
                )
                state.processes[index] = proc
                self._next_attempt[proc.name] = time.monotonic() + backoff_s(failures)
                loop = " (crash loop)" if failures >= CRASH_LOOP_FAILURES else ""
                log(f"{proc.name} (pid {proc.pid}) died; death {failures} in a row{loop}")
                changed = True
            if time.monotonic() >= self._next_attempt[proc.name]:
                state.processes[index] = self.restart(state, proc)
                changed = True
        if changed:
            self.platform.save_state(state)
        return state

    def renew_certificates(self, state: PlatformState) -> PlatformState:
        """Renew each component's leaf near its end, then restart that component so it
        reads the new one (a restart, not a death: its failures are not counted)."""
        pki = PlatformPki(self.platform.pki_folder)
        for index, proc in enumerate(state.processes):
            if proc.name not in CERTIFICATE_HOLDERS or not is_alive(proc):
                continue
            name, server = CERTIFICATE_HOLDERS[proc.name]
            if not expires_soon(pki.folder / f"{'server' if server else 'client'}-{name}.crt"):
                continue
            _ = pki.server(name) if server else pki.client(name)  # renews it
            log(f"{proc.name}: its certificate was renewed; restarting it to load it")
            stop_process(proc)
            self._next_attempt[proc.name] = 0.0
            state.processes[index] = self.restart(state, proc)
            self.platform.save_state(state)
        return state

    def restart(self, state: PlatformState, proc: RunningProcess) -> RunningProcess:
        del self._next_attempt[proc.name]
        try:
            new = self.supervisor.start(state.spec_of(proc.name))
        except (ComponentError, OSError) as exc:  # OSError: no space for its log, no fork...
            log(f"{proc.name}: restart failed: {exc}")
            # Counted as another death; the next pass schedules the next attempt.
            return proc.model_copy(update={"restarts": proc.restarts + 1, "last_error": str(exc)})
        log(f"{proc.name} restarted as pid {new.pid}")
        self.supervisor.running.clear()  # it keeps no list: platform.json is the record
        # What the dead run left in its group (a provisioner's instances) is not stopped: the
        # new run adopts it, and stopping the new run stops it.
        return proc.successor(new).model_copy(
            update={
                "restarts": proc.restarts + 1,
                "failures": proc.failures,
                "last_error": proc.last_error,
            }
        )


def main() -> None:
    platform = LocalPlatform(Settings())
    raise SystemExit(Watchdog(platform).run())


if __name__ == "__main__":
    main()
