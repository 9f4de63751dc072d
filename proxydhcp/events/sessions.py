"""Boot sessions: one machine's way from its first PXE DISCOVER to a booted OS. Pure.

Owns the stage list, the rules that join events into a per-MAC session, the success rule
and the diagnoses of stalled sessions. It is a sans-I/O core: `Tracker.feed(event)` and
`Tracker.tick(now)` return `Update`s; it never reads a clock, a file or a socket. The
Twisted side (proxydhcp.events.service) feeds it from the bus, persists the updates and
counts the metrics. Must not import Twisted, sqlite3 or the metrics.

Joining: DHCP replies, HTTP fetches and lease events name the MAC. TFTP transfers name
only an IP: it is joined through the IPs learnt from 4011 requests (ciaddr), HTTP fetches
and lease hooks; when the IP is still unknown and exactly one session is waiting for its
firmware transfer, the transfer is given to that one (the BIOS path never asks 4011).
"""

from __future__ import annotations

import dataclasses
import heapq
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from proxydhcp import arch as archtable

# --- the one stage list ------------------------------------------------------------------
PXE_DISCOVER = "pxe_discover"        # the firmware's DISCOVER reached us on 67
PROXY_OFFER = "proxy_offer"          # we sent our proxy offer
PROXY_REQUEST = "proxy_request"      # the firmware asked us on 4011 and we ACKed
FIRMWARE_TRANSFER = "firmware_transfer"  # the iPXE build (boot file) was transferred whole
IPXE_DHCP = "ipxe_dhcp"              # iPXE itself asked for its boot script URL
BOOT_SCRIPT = "boot_script"          # iPXE fetched its boot script from our HTTP
BOOT_DOWNLOAD = "boot_download"      # a kernel / initrd / image was downloaded from us
OS_LEASE = "os_lease"                # the booted OS took its own lease (DHCP-server hook)
STAGES = (PXE_DISCOVER, PROXY_OFFER, PROXY_REQUEST, FIRMWARE_TRANSFER, IPXE_DHCP,
          BOOT_SCRIPT, BOOT_DOWNLOAD, OS_LEASE)
_RANK = {s: i for i, s in enumerate(STAGES)}

OPEN, SUCCEEDED, FAILED = "open", "succeeded", "failed"
OUTCOMES = (SUCCEEDED, FAILED)

# --- diagnoses ---------------------------------------------------------------------------
NO_OFFER = "no_offer"
OFFER_IGNORED = "offer_ignored"
FIRMWARE_NEVER_FETCHED = "firmware_never_fetched"
FIRMWARE_TRANSFER_FAILED = "firmware_transfer_failed"
CHAINLOAD_LOOP = "chainload_loop"
IPXE_NEVER_ASKED = "ipxe_never_asked"
SCRIPT_NEVER_FETCHED = "script_never_fetched"
SCRIPT_FAILED = "script_failed"
DOWNLOAD_FAILED = "download_failed"
NOTHING_DOWNLOADED = "nothing_downloaded"
OS_NEVER_LEASED = "os_never_leased"
STALLED = "stalled"
DIAGNOSES = (NO_OFFER, OFFER_IGNORED, FIRMWARE_NEVER_FETCHED, FIRMWARE_TRANSFER_FAILED,
             CHAINLOAD_LOOP, IPXE_NEVER_ASKED, SCRIPT_NEVER_FETCHED, SCRIPT_FAILED,
             DOWNLOAD_FAILED, NOTHING_DOWNLOADED, OS_NEVER_LEASED, STALLED)

# Firmware labels (bounded): proxydhcp.client's kinds plus "none".
FIRMWARE_LABELS = ("legacy-pxe", "ipxe", "uefi-http", "none")
_BOOT_FIRMWARE = ("legacy-pxe", "uefi-http")   # a DISCOVER from these starts a boot
_TFTP_QUIET = ("probe",)                     # tsize probes: the firmware asks again at once
_TIMELINE_MAX = 200


@dataclass
class Diagnosis:
    code: str
    summary: str      # what happened, with the facts (file, outcome, counts)
    advice: str       # what to try

    def as_dict(self) -> dict:
        return {"code": self.code, "summary": self.summary, "advice": self.advice}


@dataclass
class Session:
    id: str
    mac: str
    started: float
    updated: float
    state: str = OPEN
    closed: bool = False
    success_stage: str = BOOT_SCRIPT
    stages: dict = field(default_factory=dict)     # stage -> time first reached
    arch: int | None = None
    firmware: str | None = None                    # the machine's own network-boot firmware
    boot_file: str | None = None                   # the firmware file we told it to fetch
    ips: list = field(default_factory=list)
    lease: dict | None = None                      # last lease seen through a DHCP-server hook
    counts: dict = field(default_factory=dict)
    silence: dict | None = None                    # why we stayed silent, last time we did
    last_failure: dict | None = None
    finished: float | None = None                  # when it succeeded or failed
    diagnosis: Diagnosis | None = None
    timeline: list = field(default_factory=list)   # [{time, kind, stage, text}]

    @property
    def last_stage(self) -> str | None:
        return max(self.stages, key=_RANK.__getitem__) if self.stages else None

    @property
    def arch_label(self) -> str:
        return archtable.label(self.arch)

    @property
    def firmware_label(self) -> str:
        return self.firmware if self.firmware in FIRMWARE_LABELS else "none"

    @property
    def duration(self) -> float:
        return (self.finished or self.updated) - self.started

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def n(self, name: str) -> int:
        return self.counts.get(name, 0)

    def as_dict(self) -> dict:
        """A snapshot another thread may serialise while this session moves on. Written out by
        hand: dataclasses.asdict deep-copies every timeline entry (~70 us a session, on the
        reactor). Containers the tracker mutates in place are copied; the dicts it only ever
        replaces (lease, silence, last_failure) and the timeline entries are shared."""
        d = {"id": self.id, "mac": self.mac, "started": self.started, "updated": self.updated,
             "state": self.state, "closed": self.closed, "success_stage": self.success_stage,
             "stages": dict(self.stages), "arch": self.arch, "firmware": self.firmware,
             "boot_file": self.boot_file, "ips": list(self.ips), "lease": self.lease,
             "counts": dict(self.counts), "silence": self.silence, "last_failure": self.last_failure,
             "finished": self.finished,
             "diagnosis": self.diagnosis.as_dict() if self.diagnosis is not None else None,
             "timeline": list(self.timeline)}
        d["last_stage"] = self.last_stage
        d["arch_label"] = self.arch_label
        d["duration"] = round(self.duration, 3)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Session":
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        if values.get("diagnosis"):
            values["diagnosis"] = Diagnosis(**values["diagnosis"])
        return cls(**values)


@dataclass
class Update:
    """What changed: kind is opened | stage | succeeded | failed | closed | updated."""
    kind: str
    session: Session
    stage: str | None = None


# The HTTP service's resource kind ("script" | "file" | "firmware" | ...) cannot travel as
# "kind" (the event's own kind); these are the names it may use, first match wins.
HTTP_KIND_FIELDS = ("fetch", "resource", "fetch_kind", "http_kind", "what", "category")


def http_resource_kind(ev: dict) -> str | None:
    for name in HTTP_KIND_FIELDS:
        if ev.get(name):
            return ev[name]
    return None


def _base(path: str | None) -> str:
    return (path or "").rstrip("/").rsplit("/", 1)[-1]


class Tracker:
    """Feed it events (dicts from the bus) and the time; it returns session updates."""

    def __init__(self, success_stage: str = BOOT_SCRIPT, stall_timeout: float = 120.0,
                 loop_threshold: int = 3, lease_window: float = 3600.0,
                 max_sessions: int = 20000) -> None:
        if success_stage not in _RANK:
            raise ValueError(f"success_stage {success_stage!r}: one of {', '.join(STAGES)}")
        self.success_stage = success_stage
        self.stall_timeout = stall_timeout
        self.loop_threshold = loop_threshold
        self.lease_window = lease_window
        self.max_sessions = max_sessions
        self.by_mac: OrderedDict[str, Session] = OrderedDict()   # the latest session per MAC
        self.by_ip: OrderedDict[str, str] = OrderedDict()        # ip -> mac
        self.leases: OrderedDict[str, dict] = OrderedDict()      # mac -> last lease (no session yet)
        # heaps of (due time, mac, session id): open sessions by when they stall, closed ones
        # by when they are forgotten
        self._open_due: list[tuple[float, str, str]] = []
        self._closed_due: list[tuple[float, str, str]] = []

    # --- input -----------------------------------------------------------------------
    def feed(self, event: dict) -> list[Update]:
        kind = event.get("kind")
        handler = {"dhcp.reply": self._dhcp, "dhcp.silence": self._dhcp,
                   "tftp.transfer": self._tftp, "http.fetch": self._http,
                   "lease": self._lease}.get(kind)
        if handler is None:
            return []
        return handler(event, [])

    def tick(self, now: float) -> list[Update]:
        """Close sessions idle for stall_timeout: open ones fail with a diagnosis,
        succeeded ones are simply closed. Forget closed sessions after lease_window.
        Looks only at sessions that are due (heaps of due times), so its cost follows what
        expires, not how many sessions are kept."""
        updates: list[Update] = []
        keep = self._keep
        heap = self._open_due
        while heap and heap[0][0] <= now:
            s = self._live(heapq.heappop(heap))
            if s is None:
                continue              # replaced by a newer session or evicted: nothing to do
            if s.closed:
                heapq.heappush(self._closed_due, (s.updated + keep, s.mac, s.id))
                continue
            if now - s.updated < self.stall_timeout:
                heapq.heappush(heap, (s.updated + self.stall_timeout, s.mac, s.id))   # touched since
                continue
            if s.state == OPEN:
                self._fail(s, diagnose(s, self.loop_threshold), now, updates)
            else:
                s.closed = True
                updates.append(Update("closed", s))
            heapq.heappush(self._closed_due, (s.updated + keep, s.mac, s.id))
        heap, later = self._closed_due, []
        while heap and heap[0][0] <= now:
            s = self._live(heapq.heappop(heap))
            if s is None:
                continue
            if now - s.updated > keep:
                del self.by_mac[s.mac]
            else:
                later.append((s.updated + keep, s.mac, s.id))
        for entry in later:
            heapq.heappush(heap, entry)
        return updates

    @property
    def _keep(self) -> float:
        return max(self.lease_window, self.stall_timeout)

    def _live(self, entry: tuple) -> Session | None:
        s = self.by_mac.get(entry[1])
        return s if s is not None and s.id == entry[2] else None

    def _schedule(self, s: Session) -> None:
        """s needs a look at its due time. One entry per session: a later touch is noticed when
        the entry comes up, and the entry then goes back in at the new time."""
        if s.closed:
            heapq.heappush(self._closed_due, (s.updated + self._keep, s.mac, s.id))
        else:
            heapq.heappush(self._open_due, (s.updated + self.stall_timeout, s.mac, s.id))

    def _evict_one(self) -> None:
        """Over max_sessions: forget the closed session due first, else the open one idle the
        longest (the heaps give both without a scan, and consume the entries they pop)."""
        for heap in (self._closed_due, self._open_due):
            while heap:
                entry = heapq.heappop(heap)
                s = self._live(entry)
                if s is None:
                    continue
                if s.closed and heap is self._open_due:   # closed since: the better one to forget
                    del self.by_mac[s.mac]
                    return
                actual = s.updated + (self._keep if s.closed else self.stall_timeout)
                if actual > entry[0]:
                    heapq.heappush(heap, (actual, s.mac, s.id))   # touched since: not the idlest
                    continue
                del self.by_mac[s.mac]
                return
        self.by_mac.popitem(last=False)

    def restore(self, sessions: list[Session]) -> None:
        """Take back sessions that were open when the daemon stopped."""
        for s in sorted(sessions, key=lambda s: s.updated):
            self.by_mac[s.mac] = s
            self._schedule(s)
            for ip in s.ips:
                self._learn_ip(ip, s.mac)

    def get(self, mac: str) -> Session | None:
        return self.by_mac.get(mac)

    # --- session bookkeeping ---------------------------------------------------------
    def _new(self, mac: str, t: float, updates: list) -> Session:
        old = self.by_mac.pop(mac, None)
        if old is not None and not old.closed:
            if old.state == OPEN:
                self._fail(old, diagnose(old, self.loop_threshold), old.updated, updates)
            else:
                old.closed = True
                updates.append(Update("closed", old))
        s = Session(id=f"{mac.replace(':', '')}-{int(t * 1000)}", mac=mac, started=t, updated=t,
                    success_stage=self.success_stage)
        lease = self.leases.pop(mac, None)
        if lease:
            s.lease = lease
            if lease.get("ip"):
                s.ips.append(lease["ip"])
        while len(self.by_mac) >= self.max_sessions:
            self._evict_one()
        self.by_mac[mac] = s
        self._schedule(s)
        updates.append(Update("opened", s))
        return s

    def _learn_ip(self, ip: str | None, mac: str, s: Session | None = None) -> None:
        if not ip or ip == "0.0.0.0":
            return
        self.by_ip[ip] = mac
        self.by_ip.move_to_end(ip)
        while len(self.by_ip) > self.max_sessions:
            self.by_ip.popitem(last=False)
        if s is not None and ip not in s.ips:
            s.ips.append(ip)

    def _note(self, s: Session, t: float, kind: str, text: str, stage: str | None = None) -> None:
        s.updated = max(s.updated, t)
        s.timeline.append({"time": t, "kind": kind, "stage": stage, "text": text})
        if len(s.timeline) > _TIMELINE_MAX:
            del s.timeline[1]   # keep the first entry: where the session began
            s.count("timeline_dropped")

    def _reach(self, s: Session, stage: str, t: float, updates: list) -> None:
        if stage not in s.stages:
            s.stages[stage] = t
            updates.append(Update("stage", s, stage))
        if s.state == OPEN and _RANK[stage] >= _RANK[self.success_stage]:
            s.state = SUCCEEDED
            s.finished = t
            s.diagnosis = None
            updates.append(Update("succeeded", s, stage))

    def _fail(self, s: Session, diagnosis: Diagnosis, t: float, updates: list) -> None:
        s.state = FAILED
        s.closed = True
        s.finished = t
        s.diagnosis = diagnosis
        self._note(s, t, "diagnosis", f"{diagnosis.code}: {diagnosis.summary}")
        updates.append(Update("failed", s))

    def _touched(self, s: Session, updates: list) -> list:
        for u in updates:        # a plain loop: a generator costs more than the 0-3 updates
            if u.session is s:
                return updates
        updates.append(Update("updated", s))
        return updates

    # --- events ----------------------------------------------------------------------
    def _dhcp(self, ev: dict, updates: list) -> list:
        mac = ev.get("mac")
        if not mac:
            return updates
        t = ev["time"]
        port = str(ev.get("port"))
        fw = ev.get("firmware")
        replied = ev["kind"] == "dhcp.reply"
        request = ev.get("request") if replied else ev.get("message")
        s = self.by_mac.get(mac)
        if not replied and port == "67" and ev.get("reason") == "ignored_message":
            # The client's own exchange with its DHCP server (its REQUEST for the corporate
            # offer, a RELEASE...): normal, not ours to answer. Counted, but it neither fills
            # the timeline nor hides the reason we were silent to its DISCOVERs.
            if s is not None and not s.closed:
                s.count("dhcp_server_messages")
            return updates
        boot_start = port == "67" and request == "discover" and fw in _BOOT_FIRMWARE
        if boot_start:
            if s is None or s.closed or s.state != OPEN:
                s = self._new(mac, t, updates)
        elif s is None or (s.closed and s.state == FAILED) or (s.closed and fw == "ipxe"):
            s = self._new(mac, t, updates)   # iPXE in ROM, or we joined mid-boot
        if s.firmware is None or (s.firmware == "ipxe" and fw in _BOOT_FIRMWARE):
            s.firmware = fw
        if ev.get("arch") is not None:
            s.arch = ev["arch"]
        self._learn_ip(ev.get("client_ip"), mac, s)
        what = f"{request} on {port} from {fw}"
        if not replied:
            s.count("silences")
            s.silence = {"reason": ev.get("reason"), "detail": ev.get("detail"), "port": port}
            self._note(s, t, ev["kind"], f"{what}: stayed silent ({ev.get('reason')}: {ev.get('detail')})")
            if boot_start:
                s.count("discovers")
                self._reach(s, PXE_DISCOVER, t, updates)
            return self._touched(s, updates)
        boot_file = ev.get("boot_file") or ""
        if fw == "ipxe":
            s.count("ipxe_dhcp")
            self._note(s, t, ev["kind"], f"{what}: {ev.get('message')} {boot_file}", IPXE_DHCP)
            self._reach(s, IPXE_DHCP, t, updates)
            return self._touched(s, updates)
        if boot_file and fw == "legacy-pxe":
            s.boot_file = boot_file
        if port == "67" and request == "discover":
            s.count("discovers")
            s.count("offers")
            self._note(s, t, ev["kind"], f"{what}: offer {boot_file or '(boot file on 4011)'}", PROXY_OFFER)
            self._reach(s, PXE_DISCOVER, t, updates)
            self._reach(s, PROXY_OFFER, t, updates)
        else:
            s.count("proxy_requests")
            self._note(s, t, ev["kind"], f"{what}: {ev.get('message')} {boot_file}", PROXY_REQUEST)
            self._reach(s, PROXY_REQUEST, t, updates)
        return self._touched(s, updates)

    def _waiting_for_firmware(self, t: float) -> list[Session]:
        return [s for s in self.by_mac.values()
                if not s.closed and s.state == OPEN and s.boot_file
                and s.last_stage in (PROXY_OFFER, PROXY_REQUEST)
                and t - s.updated < self.stall_timeout]

    def _tftp(self, ev: dict, updates: list) -> list:
        t = ev["time"]
        ip = ev.get("client_ip") or (ev.get("client") or "").rsplit(":", 1)[0] or None
        mac = self.by_ip.get(ip) if ip else None
        s = self.by_mac.get(mac) if mac else None
        if s is None or (s.closed and s.state == FAILED):
            waiting = [w for w in self._waiting_for_firmware(t) if not w.ips or ip in w.ips]
            if len(waiting) != 1:
                return updates
            s = waiting[0]
            self._learn_ip(ip, s.mac, s)
        file = ev.get("file") or ""
        outcome = ev.get("outcome") or "ok"
        is_firmware = (s.boot_file and _base(file) == _base(s.boot_file)) or \
            (_RANK.get(s.last_stage or "", -1) < _RANK[FIRMWARE_TRANSFER] and not s.boot_file)
        return self._transfer(s, t, "tftp", file, outcome, outcome == "ok", is_firmware,
                              ev.get("kind"), updates, quiet=outcome in _TFTP_QUIET)

    def _transfer(self, s: Session, t: float, via: str, file: str, outcome, ok: bool,
                  is_firmware: bool, kind: str, updates: list, quiet: bool = False) -> list:
        if quiet:
            s.count("probes")
            self._note(s, t, kind, f"{via} {file}: {outcome}")
            return self._touched(s, updates)
        if is_firmware:
            if ok:
                s.count("firmware_ok")
                self._note(s, t, kind, f"{via} {file}: firmware transferred "
                                       f"({s.n('firmware_ok')}x)", FIRMWARE_TRANSFER)
                self._reach(s, FIRMWARE_TRANSFER, t, updates)
                if s.n("firmware_ok") >= self.loop_threshold and s.state == OPEN:
                    self._fail(s, diagnose(s, self.loop_threshold), t, updates)
            else:
                s.count("firmware_failed")
                s.last_failure = {"what": "firmware", "via": via, "file": file, "outcome": outcome, "time": t}
                self._note(s, t, kind, f"{via} {file}: firmware transfer failed ({outcome})")
            return self._touched(s, updates)
        if ok:
            s.count("downloads_ok")
            self._note(s, t, kind, f"{via} {file}: downloaded", BOOT_DOWNLOAD)
            self._reach(s, BOOT_DOWNLOAD, t, updates)
        else:
            s.count("downloads_failed")
            s.last_failure = {"what": "download", "via": via, "file": file, "outcome": outcome, "time": t}
            self._note(s, t, kind, f"{via} {file}: download failed ({outcome})")
        return self._touched(s, updates)

    def _http(self, ev: dict, updates: list) -> list:
        return self._http_fetch(ev, http_resource_kind(ev), ev["time"], updates)

    def _http_fetch(self, ev: dict, rk, t: float, updates: list) -> list:
        if rk not in ("script", "file", "firmware"):
            return updates
        ip = ev.get("client_ip")
        mac = ev.get("mac") or (self.by_ip.get(ip) if ip else None)
        if not mac:
            return updates
        s = self.by_mac.get(mac)
        if s is None or (s.closed and s.state == FAILED):
            if rk == "file":
                return updates
            s = self._new(mac, t, updates)
        self._learn_ip(ip, mac, s)
        code = int(ev.get("code") or 0)
        ok = 200 <= code < 400
        path = ev.get("path") or ""
        if rk == "script":
            if ok:
                s.count("scripts_ok")
                self._note(s, t, "http.fetch", f"http {path}: boot script ({code})", BOOT_SCRIPT)
                self._reach(s, BOOT_SCRIPT, t, updates)
            else:
                s.count("scripts_failed")
                s.last_failure = {"what": "script", "via": "http", "file": path, "outcome": code, "time": t}
                self._note(s, t, "http.fetch", f"http {path}: boot script failed ({code})")
            return self._touched(s, updates)
        return self._transfer(s, t, "http", path, code, ok, rk == "firmware", "http.fetch", updates)

    def _lease(self, ev: dict, updates: list) -> list:
        mac = ev.get("mac")
        if not mac:
            return updates
        t = ev["time"]
        action = ev.get("action")
        lease = {k: ev.get(k) for k in ("source", "action", "ip", "hostname", "lease_time", "expires")}
        lease["time"] = t
        if action in ("commit", "renew"):
            self._learn_ip(ev.get("ip"), mac)
        s = self.by_mac.get(mac)
        if s is None or (s.closed and t - s.updated > self.lease_window):
            self.leases[mac] = lease
            self.leases.move_to_end(mac)
            while len(self.leases) > self.max_sessions:
                self.leases.popitem(last=False)
            return updates
        if action in ("commit", "renew"):
            self._learn_ip(ev.get("ip"), mac, s)
        s.lease = lease
        text = f"lease {action} {ev.get('ip')} from {ev.get('source')}" + \
            (f" ({ev.get('hostname')})" if ev.get("hostname") else "")
        s.count("leases")
        handed_over = _RANK.get(s.last_stage or "", -1) >= _RANK[BOOT_SCRIPT]
        if handed_over and action in ("commit", "renew") and s.state != FAILED:
            self._note(s, t, "lease", text, OS_LEASE)
            self._reach(s, OS_LEASE, t, updates)
        else:
            self._note(s, t, "lease", text)
        return self._touched(s, updates)


# --- what the daemon learns of the updates ---------------------------------------------------
# The tracker runs in the event store's writer process (proxydhcp.events.writer); the daemon
# gets, per batch, a summary: stage counts and the sessions that ended (metrics, log lines)
# and, when user hooks are configured, their payloads.
SESSION_SUCCEEDED = "session_succeeded"     # user-hook event names ("on:")
SESSION_FAILED = "session_failed"
STAGE_REACHED = "stage_reached"
_HOOK_EVENT = {"succeeded": SESSION_SUCCEEDED, "failed": SESSION_FAILED, "stage": STAGE_REACHED}


def hook_payload(update: Update) -> dict | None:
    """The user-hook payload for an Update, or None when no hook event matches it."""
    event = _HOOK_EVENT.get(update.kind)
    if event is None:
        return None
    s = update.session
    d = {"event": event, "time": time.time(), "mac": s.mac, "session": s.id,
         "stage": update.stage if event == STAGE_REACHED else s.last_stage,
         "last_stage": s.last_stage, "state": s.state, "arch": s.arch_label,
         "firmware": s.firmware_label, "boot_file": s.boot_file, "ips": list(s.ips),
         "started": s.started, "duration": round(s.duration, 3)}
    if s.diagnosis is not None and event == SESSION_FAILED:
        d["diagnosis"] = s.diagnosis.code
        d["summary"] = s.diagnosis.summary
        d["advice"] = s.diagnosis.advice
    if s.lease:
        d["ip"] = s.lease.get("ip")
        d["hostname"] = s.lease.get("hostname")
    return d


def summarise(updates: list[Update], hooks=()) -> dict:
    """What the daemon needs of a batch's updates, as plain data:
      arches   arch labels of the sessions opened (their metric series start at 0)
      stages   [[stage, arch label, count], ...]
      ended    [[outcome, arch, firmware label, duration, diagnosis code, session id, mac,
                 last stage, summary, advice], ...] for each session that succeeded or failed
      hooks    user-hook payloads, for the hook events named in `hooks` (those the daemon's
               configured hooks are mapped to)"""
    stages: dict = {}
    arches: set = set()
    ended, payloads = [], []
    for u in updates:
        s = u.session
        kind = u.kind
        if kind == "opened":
            arches.add(s.arch_label)
        elif kind == "stage":
            key = (u.stage, s.arch_label)
            stages[key] = stages.get(key, 0) + 1
        elif kind in OUTCOMES:
            d = s.diagnosis
            ended.append([kind, s.arch_label, s.firmware_label, max(0.0, s.duration),
                          d.code if d else None, s.id, s.mac, s.last_stage,
                          d.summary if d else None, d.advice if d else None])
        if hooks and _HOOK_EVENT.get(kind) in hooks:
            payloads.append(hook_payload(u))
    return {"arches": sorted(arches), "stages": [[st, a, n] for (st, a), n in stages.items()],
            "ended": ended, "hooks": payloads}


# --- diagnosis ---------------------------------------------------------------------------
_SILENCE_ADVICE = {
    "no_boot_file": "add a boot.firmware entry for this machine's firmware key (see `proxydhcp arches`)"
                    " or a profile that matches it",
    "policy": "the machine is refused by the allow/deny rules: check the groups that match its MAC/arch",
    "ignored_message": "the firmware sent a message we never answer on that port: capture the exchange",
}
_TFTP_ADVICE = {
    "not_found": "the file is not in tftp.root: put it there or fix boot.firmware / the profile's file name",
    "access_denied": "the file is not readable by the daemon or lies outside tftp.root: fix its permissions",
    "timeout": "the firmware stopped acknowledging: check MTU and firewalls for UDP 69 and the ephemeral "
               "ports, and try a smaller blksize/windowsize for this client",
    "refused_limit": "too many transfers at once: raise tftp.max_transfers / max_transfers_per_client",
    "client_error": "the firmware aborted the transfer: it may not like the file (wrong arch build or "
                    "Secure Boot refusing an unsigned image)",
}


def diagnose(s: Session, loop_threshold: int = 3) -> Diagnosis:
    """Why this session stopped where it did, and what to try."""
    last = s.last_stage
    a = s.arch_label
    fw_file = s.boot_file or (s.last_failure or {}).get("file") or "the firmware"
    if s.n("firmware_ok") >= loop_threshold:
        return Diagnosis(
            CHAINLOAD_LOOP,
            f"the machine fetched {fw_file} {s.n('firmware_ok')} times without reaching its boot script:"
            f" iPXE is being handed iPXE again",
            "iPXE is not recognised as iPXE: check that its DHCP requests carry user-class iPXE (or set "
            "dhcp.custom_user_class to your build's class); if iPXE is recognised, its embedded script "
            "chains back to the firmware file")
    if last is None or last == PXE_DISCOVER:
        why = s.silence or {}
        return Diagnosis(
            NO_OFFER,
            f"{s.n('discovers') or 'no'} DISCOVER(s) from a {s.firmware_label} {a} client and we stayed silent"
            f" ({why.get('reason')}: {why.get('detail')})",
            _SILENCE_ADVICE.get(why.get("reason"), "run `proxydhcp explain` for this client to see why we are silent"))
    if s.n("firmware_failed") and not s.n("firmware_ok"):
        f = s.last_failure or {}
        return Diagnosis(
            FIRMWARE_TRANSFER_FAILED,
            f"the firmware transfer of {f.get('file')} over {f.get('via')} failed "
            f"{s.n('firmware_failed')} time(s), last: {f.get('outcome')}",
            _TFTP_ADVICE.get(f.get("outcome"), "see the TFTP/HTTP log lines for this client")
            if f.get("via") == "tftp" else "check that the firmware file is served by the HTTP service")
    if last == PROXY_OFFER:
        return Diagnosis(
            OFFER_IGNORED,
            f"{s.n('discovers')} DISCOVER(s), {s.n('offers')} proxy offer(s) sent, then no 4011 request"
            f" and no transfer of {fw_file}: the firmware ignored the proxy offer",
            "check that the DHCP server's own offer reaches the machine (ProxyDHCP needs it), that no other "
            "ProxyDHCP or DHCP-server option 43/60/66/67 competes, then try dhcp.reply_delay_ms or a "
            "redirect_4011 quirk for this firmware; capture the exchange if it persists")
    if last == PROXY_REQUEST:
        return Diagnosis(
            FIRMWARE_NEVER_FETCHED,
            f"we ACKed its 4011 request with {fw_file} but it never read the file",
            "check that UDP 69 reaches this server from the machine (firewalls, the advertised "
            "dhcp.server_address), that tftp.enabled is true, and the TFTP log for its address")
    if last == FIRMWARE_TRANSFER:
        return Diagnosis(
            IPXE_NEVER_ASKED,
            f"{fw_file} was transferred to the {a} machine but iPXE never sent its DHCP request",
            f"the firmware did not run it: check that {fw_file} is the build for arch {a} (a BIOS "
            "build on UEFI or the reverse), disable Secure Boot or chain a signed shim (iPXE is unsigned),"
            " and try snponly.efi instead of ipxe.efi for NICs whose driver iPXE lacks")
    if last == IPXE_DHCP:
        if s.n("scripts_failed"):
            f = s.last_failure or {}
            return Diagnosis(
                SCRIPT_FAILED,
                f"iPXE fetched its boot script {f.get('file')} and got HTTP {f.get('outcome')}",
                "check the profile that matches this machine and the HTTP service log")
        return Diagnosis(
            SCRIPT_NEVER_FETCHED,
            "iPXE asked for its boot script URL but never fetched it",
            "check that iPXE can reach the HTTP port (http.port, firewalls, the advertised server "
            "address), that the iPXE build has HTTP support, and the machine's console for the iPXE error")
    if last == BOOT_SCRIPT:
        if s.n("downloads_failed"):
            f = s.last_failure or {}
            return Diagnosis(
                DOWNLOAD_FAILED,
                f"the boot script ran but {f.get('file')} failed ({f.get('outcome')})",
                "check that the file named by the profile exists under http.root (or tftp.root)")
        return Diagnosis(
            NOTHING_DOWNLOADED,
            "the boot script was fetched but nothing it names was downloaded from us",
            "check the script (proxydhcp explain) and whether it fetches from another server")
    if last == BOOT_DOWNLOAD:
        if s.n("downloads_failed"):
            f = s.last_failure or {}
            return Diagnosis(
                DOWNLOAD_FAILED,
                f"a download failed: {f.get('file')} ({f.get('outcome')})",
                "check that the file named by the profile exists under http.root (or tftp.root)")
        return Diagnosis(
            OS_NEVER_LEASED,
            "the kernel/initrd were downloaded but the booted OS never took a lease",
            "check the kernel command line (ip=dhcp), that the initrd has the NIC driver, and that the "
            "DHCP server's hook for proxydhcp is installed (contrib/)")
    return Diagnosis(STALLED, f"the session stopped after {last}", "see the session's timeline")
