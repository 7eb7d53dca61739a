#!/usr/bin/env python3
"""Ferry's benchmark (issue #5): Ferry side by side with podman, runc and raw CRIU on
the same workload, against the machine's limits, in one run.

    python3 bench/run.py [--quick] [--sizes 64,512,2048] [--reps 3] [--ferry PATH]

Every tool checkpoints and restores the same static `memhog` process (bench/memhog.c) in
a rootfs made from Debian's busybox-static. Tools run interleaved (one cycle of each tool
per repetition and mode, rotating the order), each measured cold (after a settle pause)
and warm (after the same untimed touch-and-free of memory), and every restore is verified:
SIGUSR1 makes memhog re-check its memory against its checksum; the result must say OK,
carry the checkpointed process's nonce and a counter that went on. A restore that does
not verify is a failure, never a time.

Output: a table on the terminal, bench/results/latest.json (raw samples, summaries,
ratios, fractions of the limits, targets) and bench/results/latest.md (the tables that
BENCHMARKS.md quotes). Only the standard library is used.

Structure: a `Tool` subclass per peer (FerryTool, PodmanTool, RuncTool, CriuTool) runs
one cycle and records named metrics; `PLACEHOLDERS` lists the measurements whose Ferry
feature does not exist yet (lazy migration), so they show up as "not implemented
yet" until a Tool method for them is added.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WORK = os.environ.get("FERRY_BENCH_WORK", "/var/tmp/ferry-bench")
CRIU = "/usr/local/sbin/criu"
# CRIU 4.1 first on PATH, for podman and runc (which exec "criu" from PATH).
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ENV = dict(os.environ, PATH=PATH)
PODMAN_IMAGE = "localhost/ferry-bench-memhog:latest"
FERRY_IMAGE = "bench-memhog:latest"
PODMAN_RUN_FLAGS = ["--runtime", "runc", "--network", "none",
                    "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=20000:20000"]
RUNC_ROOT = "/run/ferry-bench-runc"
TAG_PREFIX = "fbench-"
STATE_DIR_IN_CONTAINER = "/tmp"

# Measurements the issue asks for whose Ferry feature does not exist yet. When a feature
# lands, add the Tool method that measures it and remove its line here.
PLACEHOLDERS = {}
NOT_IMPLEMENTED = "not implemented yet"


class BenchError(Exception):
    """A step that failed: recorded in the results instead of a number."""


# --------------------------------------------------------------------------------------
# Cleanup: every container, process and file the bench creates is registered here the
# moment it is created, and removed in reverse order at the end of its cycle, on failure
# and on Ctrl-C.

class Cleanup:
    def __init__(self):
        self.actions = []

    def push(self, label, fn):
        self.actions.append((label, fn))
        return len(self.actions) - 1

    def run(self, keep=0):
        while len(self.actions) > keep:
            label, fn = self.actions.pop()
            try:
                fn()
            except Exception as exc:  # cleanup must go on
                log(f"cleanup of {label} failed: {exc}")


CLEANUP = Cleanup()


def on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Running commands

def run(cmd, timeout=900, check=True, **kw):
    """Runs cmd; returns (stdout, seconds). Raises BenchError with stderr on failure."""
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=kw.pop("stdin", subprocess.DEVNULL), timeout=timeout, text=True, **kw)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(cmd[:4])}...: timed out after {timeout} s")
    dt = time.monotonic() - t0
    if check and p.returncode != 0:
        raise BenchError(f"{short(cmd)} exited {p.returncode}: {last_lines(p.stderr or p.stdout)}")
    return p.stdout, dt


def short(cmd):
    return " ".join(os.path.basename(c) if i == 0 else c for i, c in enumerate(cmd[:6])) + (" ..." if len(cmd) > 6 else "")


def last_lines(text, n=4):
    lines = [l.strip() for l in (text or "").strip().splitlines() if l.strip()]
    return " | ".join(lines[-n:]) if lines else "(no output)"


def descendants(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids = [int(x) for x in f.read().split()]
                out.extend(kids)
                todo.extend(kids)
        except OSError:
            pass
    return out


def vm_hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def timed(cmd, timeout=900, stdin=None, stdout=None, stderr=None):
    """Runs cmd, timing it and polling the peak RSS (VmHWM) of the command's own process
    and of its descendants (CRIU, for libcriu users) every 50 ms. Every timed command of
    every tool goes through here, so the polling costs all of them the same."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, env=ENV, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                         stdout=stdout if stdout is not None else subprocess.PIPE,
                         stderr=stderr if stderr is not None else subprocess.PIPE, text=True)
    peak = {"self": 0, "children": 0}
    done = threading.Event()

    def poll():
        while not done.is_set():
            v = vm_hwm_kib(p.pid)
            if v:
                peak["self"] = max(peak["self"], v)
            for c in descendants(p.pid):
                v = vm_hwm_kib(c)
                if v:
                    peak["children"] = max(peak["children"], v)
            done.wait(0.05)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        done.set()
        raise BenchError(f"{short(cmd)}: timed out after {timeout} s")
    finally:
        done.set()
        th.join()
    dt = time.monotonic() - t0
    if p.returncode != 0:
        raise BenchError(f"{short(cmd)} exited {p.returncode}: {last_lines(err or out)}")
    return {"seconds": dt, "stdout": out or "", "peak_rss_kib": peak["self"] or None,
            "children_peak_rss_kib": peak["children"] or None}


# --------------------------------------------------------------------------------------
# The workload: finding memhog, reading its counter, verifying it

def find_pids(tag):
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"memhog") and tag.encode() in argv:
            try:
                with open(f"/proc/{d}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        continue
            except OSError:
                continue
            pids.append(int(d))
    return pids


def find_pid(tag, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        pids = find_pids(tag)
        if len(pids) == 1:
            return pids[0]
        if len(pids) > 1:
            raise BenchError(f"more than one memhog tagged {tag}: {pids}")
        if time.monotonic() > deadline:
            raise BenchError(f"no memhog process tagged {tag}")
        time.sleep(0.02)


def read_state(pid, state_dir, name):
    try:
        with open(f"/proc/{pid}/root{state_dir}/{name}") as f:
            return f.read().split()
    except OSError:
        return None


def read_counter(pid, state_dir):
    s = read_state(pid, state_dir, "counter")
    if not s or len(s) != 2:
        return None
    return int(s[0]), int(s[1])


def wait_ready(tag, state_dir, mib, timeout=None):
    """Waits until memhog has filled its memory and counted a few times."""
    timeout = timeout or 60 + mib / 20
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = find_pids(tag)
        if len(pids) == 1:
            c = read_counter(pids[0], state_dir)
            if c and c[1] >= 3:
                return pids[0], c
        time.sleep(0.1)
    raise BenchError(f"memhog {tag} did not become ready in {timeout:.0f} s")


def verify(tag, state_dir, nonce, min_counter, timeout=120):
    """SIGUSR1 -> memhog re-checks its memory; OK, same nonce, counter >= min_counter,
    and the counter goes on afterwards. Returns seconds until resumed (the first counter
    past min_counter seen)."""
    t0 = time.monotonic()
    pid = find_pid(tag)
    deadline = time.monotonic() + timeout
    resumed = None
    while time.monotonic() < deadline:
        c = read_counter(pid, state_dir)
        if c and c[1] > min_counter:
            resumed = time.monotonic() - t0
            break
        time.sleep(0.005)
    if resumed is None:
        raise BenchError(f"restored memhog {tag} did not count past {min_counter}")
    try:
        os.unlink(f"/proc/{pid}/root{state_dir}/result")
    except FileNotFoundError:
        pass
    os.kill(pid, signal.SIGUSR1)
    while time.monotonic() < deadline:
        r = read_state(pid, state_dir, "result")
        if r:
            break
        time.sleep(0.02)
    else:
        raise BenchError(f"memhog {tag} wrote no verification result")
    if len(r) != 3 or r[0] != "OK":
        raise BenchError(f"memory verification failed: result {' '.join(r)}")
    if int(r[1]) != nonce:
        raise BenchError(f"restored process has nonce {r[1]}, not the checkpointed {nonce} (restarted?)")
    if int(r[2]) < min_counter:
        raise BenchError(f"counter went back: {r[2]} < {min_counter}")
    time.sleep(0.25)
    c = read_counter(pid, state_dir)
    if not c or c[1] <= int(r[2]):
        raise BenchError("counter stopped after verification")
    return resumed


def memhog_args(mib, comp, tag, state_dir, binary="/bin/memhog"):
    return [binary, "-d", state_dir, "-t", tag] + (["-c"] if comp else []) + [str(mib)]


def size_of(path):
    if os.path.isdir(path):
        total = 0
        for root, _dirs, files in os.walk(path):
            for f in files:
                try:
                    total += os.lstat(os.path.join(root, f)).st_size
                except OSError:
                    pass
        return total
    return os.stat(path).st_size


def remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


# --------------------------------------------------------------------------------------
# Preparation before every timed step: the same for every tool.

class Prep:
    def __init__(self, memtool, settle):
        self.memtool = memtool
        self.settle = settle

    def __call__(self, mode, mib):
        subprocess.run(["sync"], check=False)
        if mode == "cold":
            # Let memory freed by the previous step go back to the host.
            time.sleep(self.settle)
        else:
            # Touch and free about what the step will need: its pages twice (process or
            # page cache, plus the archive) and some slack.
            run([self.memtool, "warm", str(2 * mib + 256)], timeout=600)


# --------------------------------------------------------------------------------------
# CRIU statistics

def _varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf):
    i, out = 0, {}
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt == 2:
            n, i = _varint(buf, i)
            v, i = buf[i:i + n], i + n
        elif wt == 1:
            v, i = int.from_bytes(buf[i:i + 8], "little"), i + 8
        elif wt == 5:
            v, i = int.from_bytes(buf[i:i + 4], "little"), i + 4
        else:
            break
        out[num] = v
    return out


DUMP_STATS = {1: "freezing_time", 2: "frozen_time", 3: "memdump_time", 4: "memwrite_time",
              5: "pages_scanned", 6: "pages_skipped_parent", 7: "pages_written",
              8: "irmap_resolve", 9: "pages_lazy", 10: "page_pipes", 11: "page_pipe_bufs"}
RESTORE_STATS = {1: "pages_compared", 2: "pages_skipped_cow", 3: "forking_time", 4: "restore_time",
                 5: "pages_restored"}


def lazy_pages_in(images):
    """Pages a lazy dump left behind: the pagemap entries (pagemap.proto: vaddr = 1,
    nr_pages = 2, flags = 4) marked PE_LAZY (2) and not PE_PRESENT (4), after the
    images' two magic words and the pagemap head."""
    total = 0
    for name in os.listdir(images):
        if not (name.startswith("pagemap-") and name.endswith(".img")) or name.startswith("pagemap-shmem-"):
            continue
        with open(os.path.join(images, name), "rb") as f:
            data = f.read()
        off, first = 8, True
        while off + 4 <= len(data):
            n = int.from_bytes(data[off:off + 4], "little")
            entry = _fields(data[off + 4:off + 4 + n])
            off += 4 + n
            if first:
                first = False
                continue
            flags = entry.get(4, 0)
            if flags & 2 and not flags & 4:
                total += entry.get(2, 0)
    return total


def criu_stats(path):
    """Decodes CRIU's stats-dump / stats-restore image (stats.proto) without crit:
    magic words, a 32-bit length, then a StatsEntry {dump = 1, restore = 2}."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    off = 4
    if int.from_bytes(data[0:4], "little") == 0x55105940:  # IMG_SERVICE_MAGIC, then the image's
        off = 8
    if len(data) < off + 4:
        return None
    n = int.from_bytes(data[off:off + 4], "little")
    entry = _fields(data[off + 4:off + 4 + n])
    if 1 in entry:
        names, sub = DUMP_STATS, _fields(entry[1])
    elif 2 in entry:
        names, sub = RESTORE_STATS, _fields(entry[2])
    else:
        return None
    return {names.get(k, str(k)): v for k, v in sub.items() if isinstance(v, int)}


# --------------------------------------------------------------------------------------
# Tools. Each cycle starts one memhog, measures the tool's steps on it, verifies every
# restore, records metrics with `rec(name, value)` and cleans up everything it started.

class Tool:
    name = "?"
    # (metric, label, unit) in display order
    metrics = []

    def __init__(self, bench):
        self.b = bench

    def cycle(self, mib, comp, mode, tag, rec):
        raise NotImplementedError


class FerryTool(Tool):
    """Ferry, on two state roots A and B (two "hosts"): --leave-running export (frozen
    time), two snapshots, export zstd on A and import on B, export none on B and import
    on A, then stop-copy migration A -> B over loopback (`ferry serve` on B)."""
    name = "ferry"

    def __init__(self, bench, binary):
        super().__init__(bench)
        self.binary = binary
        self.roots = [os.path.join(WORK, "ferry-a"), os.path.join(WORK, "ferry-b")]

    def ferry(self, root, *args):
        return [self.binary, "--root", root] + list(args)

    def setup(self):
        for root in self.roots:
            self.remove_all(root)
            run(self.ferry(root, "image", "rm", FERRY_IMAGE), check=False)
            run(self.ferry(root, "image", "import", self.b.rootfs, FERRY_IMAGE))

    def remove_all(self, root):
        if not os.path.isdir(root):
            return
        out, _ = run(self.ferry(root, "ps", "-a", "--format", "json"), check=False)
        try:
            for c in json.loads(out or "[]"):
                run(self.ferry(root, "rm", "-f", c["name"]), check=False)
        except ValueError:
            pass

    def teardown(self):
        for root in self.roots:
            self.remove_all(root)
            run(self.ferry(root, "image", "rm", FERRY_IMAGE), check=False)
            remove(os.path.join(WORK, "migration.token"))
            if mounted_under(root):
                log(f"ferry: mounts left under {root}: {mounted_under(root)}; not removing it")
            else:
                remove(root)

    def rm_later(self, root, name):
        CLEANUP.push(f"ferry container {name}", lambda: run(self.ferry(root, "rm", "-f", name), check=False))

    def checkpoint(self, root, name, archive, compress, leave_running, mode, mib):
        args = ["checkpoint", "--export", archive, "--compress", compress, "--format", "json"]
        if leave_running:
            args.append("--leave-running")
        self.b.prep(mode, mib)
        r = timed(self.ferry(root, *(args + [name])))
        try:
            report = json.loads(r["stdout"])
        except ValueError:
            raise BenchError(f"ferry checkpoint printed no JSON: {last_lines(r['stdout'])}")
        return r, report

    def cycle(self, mib, comp, mode, tag, rec):
        a, b = self.roots
        w1, w2, w3 = f"{tag}-1", f"{tag}-2", f"{tag}-3"
        archive = os.path.join(WORK, f"{tag}.tar")
        CLEANUP.push("archive", lambda: [remove(archive + s) for s in (".zst", "")])
        self.rm_later(a, w1)
        run(self.ferry(a, "run", "-d", "--name", w1, FERRY_IMAGE,
                       *memhog_args(mib, comp, tag, STATE_DIR_IN_CONTAINER)))
        pid, (nonce, _) = wait_ready(tag, STATE_DIR_IN_CONTAINER, mib)

        # 1. --leave-running --export (zstd): the frozen time.
        def leave_running():
            r, rep = self.checkpoint(a, w1, archive + ".zst", "zstd", True, mode, mib)
            rec("leave_running_frozen_ms", rep.get("frozenMilliseconds"))
            rec("leave_running_s", r["seconds"])
            st = rep.get("criu") or {}
            rec("leave_running_criu_frozen_ms", st.get("frozenTime", 0) / 1000 if st else None)
            remove(archive + ".zst")
        optional_step(rec, ["leave_running_s", "leave_running_frozen_ms", "leave_running_criu_frozen_ms"], leave_running)
        c = read_counter(pid, STATE_DIR_IN_CONTAINER)
        verify(tag, STATE_DIR_IN_CONTAINER, nonce, c[1] if c else 0)

        # Snapshots: the first one holds everything, the second shares what did not change.
        def snapshot(which):
            self.b.prep(mode, mib)
            r = timed(self.ferry(a, "snapshot", "create", "--tag", which, "--format", "json", w1))
            try:
                rep = json.loads(r["stdout"])
            except ValueError:
                raise BenchError(f"ferry snapshot create printed no JSON: {last_lines(r['stdout'])}")
            rec(f"snapshot_{which}_s", r["seconds"])
            rec(f"snapshot_{which}_frozen_ms", rep.get("frozenMilliseconds"))
            rec(f"snapshot_{which}_own_bytes", rep.get("ownBytes"))
            rec(f"snapshot_{which}_peak_rss_mib", kib_to_mib(r["peak_rss_kib"]))
        for which in ("first", "second"):
            optional_step(rec, [f"snapshot_{which}_{m}" for m in ("s", "frozen_ms", "own_bytes")],
                          lambda w=which: snapshot(w))
        c = read_counter(pid, STATE_DIR_IN_CONTAINER)
        verify(tag, STATE_DIR_IN_CONTAINER, nonce, c[1] if c else 0)

        # 2. checkpoint --export (zstd), container ends checkpointed.
        c0 = read_counter(pid, STATE_DIR_IN_CONTAINER)[1]
        r, rep = self.checkpoint(a, w1, archive + ".zst", "zstd", False, mode, mib)
        self.record_export(rec, "export_zstd", r, rep, archive + ".zst")
        # 3. restore --import into root B.
        self.rm_later(b, w2)
        self.b.prep(mode, mib)
        r = timed(self.ferry(b, "restore", "--import", archive + ".zst", "--name", w2, "--format", "json"))
        resumed = verify(tag, STATE_DIR_IN_CONTAINER, nonce, c0)
        rec("import_zstd_s", r["seconds"])
        rec("import_zstd_peak_rss_mib", kib_to_mib(r["peak_rss_kib"]))
        rec("import_zstd_descendants_peak_rss_mib", kib_to_mib(r["children_peak_rss_kib"]))
        rec("gap_zstd_s", self.b.last["export_zstd_s"] + r["seconds"] + resumed)
        remove(archive + ".zst")
        run(self.ferry(a, "rm", "-f", w1))

        # 4. checkpoint --export --compress none from B, 5. restore --import into A.
        pid = find_pid(tag)
        c0 = read_counter(pid, STATE_DIR_IN_CONTAINER)[1]
        r, rep = self.checkpoint(b, w2, archive, "none", False, mode, mib)
        self.record_export(rec, "export_none", r, rep, archive)
        self.rm_later(a, w3)
        self.b.prep(mode, mib)
        r = timed(self.ferry(a, "restore", "--import", archive, "--name", w3, "--format", "json"))
        resumed = verify(tag, STATE_DIR_IN_CONTAINER, nonce, c0)
        rec("import_none_s", r["seconds"])
        rec("import_none_peak_rss_mib", kib_to_mib(r["peak_rss_kib"]))
        rec("gap_none_s", self.b.last["export_none_s"] + r["seconds"] + resumed)
        remove(archive)
        run(self.ferry(b, "rm", "-f", w2))

        # 6. Live migration over loopback: stop-copy from root A to root B, then lazy
        #    (post-copy) back from B to A; the workload is verified after each.
        a, b = self.roots
        self.migrate(rec, mib, mode, tag, nonce, w3, "stop-copy", a, b)
        self.migrate(rec, mib, mode, tag, nonce, w3, "lazy", b, a)

    def migrate(self, rec, mib, mode, tag, nonce, name, how, source, destination):
        token = os.path.join(WORK, "migration.token")
        if not os.path.exists(token):
            fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, os.urandom(32).hex().encode())
            os.close(fd)
        port = free_port()
        logf = open(os.path.join(WORK, "serve.log"), "ab")
        serve = subprocess.Popen(self.ferry(destination, "serve", "--listen", f"127.0.0.1:{port}", "--token-file", token),
                                 env=ENV, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
        logf.close()
        CLEANUP.push("ferry serve", lambda: stop_process(serve))
        wait_listening(port, serve)
        self.rm_later(destination, name)
        pid = find_pid(tag)
        c0 = read_counter(pid, STATE_DIR_IN_CONTAINER)[1]
        self.b.prep(mode, mib)
        r = timed(self.ferry(source, "migrate", name, "--to", f"127.0.0.1:{port}", "--token-file", token,
                             "--mode", how, "--format", "json"))
        try:
            rep = json.loads(r["stdout"])
        except ValueError:
            raise BenchError(f"ferry migrate --mode {how} printed no JSON: {last_lines(r['stdout'])}")
        resumed = verify(tag, STATE_DIR_IN_CONTAINER, nonce, c0)
        key = "migrate_" + how.replace("-", "_")
        rec(f"{key}_s", r["seconds"])
        rec(f"{key}_downtime_ms", rep.get("downtime_ms"))
        rec(f"{key}_total_ms", rep.get("total_ms"))
        rec(f"{key}_bytes_sent", rep.get("bytes_sent"))
        if rep.get("pages_transferred_lazily") is not None:
            rec(f"{key}_pages_lazily", rep["pages_transferred_lazily"])
            # The memory that followed the switch, over the time it took to arrive (from
            # the container running on the destination to the destination saying every
            # page is there; older reports lack the phase: until the migration ended).
            arrived = (rep.get("phases_ms") or {}).get("memory_arrived", rep.get("total_ms", 0))
            after = (arrived - rep.get("downtime_ms", 0)) / 1000
            if after > 0:
                rec(f"{key}_page_rate_bytes_per_s", rep["pages_transferred_lazily"] * 4096 / after)
        rec(f"{key}_peak_rss_mib", kib_to_mib(r["peak_rss_kib"]))
        rec(f"{key}_serve_peak_rss_mib", kib_to_mib(vm_hwm_kib(serve.pid)))
        rec(f"{key}_gap_s", r["seconds"] + resumed)
        stop_process(serve)

    def record_export(self, rec, key, r, rep, path):
        rec(f"{key}_s", r["seconds"])
        rec(f"{key}_bytes", size_of(path))
        rec(f"{key}_frozen_ms", rep.get("frozenMilliseconds"))
        rec(f"{key}_peak_rss_mib", kib_to_mib(r["peak_rss_kib"]))
        rec(f"{key}_descendants_peak_rss_mib", kib_to_mib(r["children_peak_rss_kib"]))
        st = rep.get("criu") or {}
        for k in ("freezingTime", "frozenTime", "memdumpTime", "memwriteTime"):
            if k in st:
                rec(f"{key}_criu_{k}_ms", st[k] / 1000)
        if "dumpMilliseconds" in rep:
            rec(f"{key}_dump_ms", rep["dumpMilliseconds"])
        ex = rep.get("export") or {}
        if "milliseconds" in ex:
            rec(f"{key}_pack_ms", ex["milliseconds"])


def optional_step(rec, metrics, fn):
    """A step whose failure is recorded against its own metrics while the cycle goes on:
    a --leave-running checkpoint or a snapshot leaves the workload running either way
    (the verification after it decides whether the cycle can continue)."""
    try:
        fn()
    except BenchError as e:
        log(f"  step failed, cycle goes on: {e}")
        for m in metrics:
            rec(m, {"error": str(e)})


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, timeout=15):
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"ferry serve exited {proc.returncode} (see {WORK}/serve.log)")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise BenchError(f"ferry serve did not listen on 127.0.0.1:{port}")


def stop_process(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def kib_to_mib(v):
    return None if v is None else v / 1024


class PodmanTool(Tool):
    """podman 4.3 with runc: checkpoint --export (zstd, none), restore --import."""
    name = "podman"

    def setup(self):
        self.remove_all()
        tar = os.path.join(WORK, "rootfs.tar")
        run(["tar", "-C", self.b.rootfs, "-cf", tar, "."])
        run(["podman", "import", tar, PODMAN_IMAGE])
        remove(tar)

    def remove_all(self):
        out, _ = run(["podman", "ps", "-a", "--format", "{{.Names}}"], check=False)
        for n in out.split():
            if n.startswith(TAG_PREFIX):
                run(["podman", "rm", "-f", n], check=False)

    def teardown(self):
        self.remove_all()
        run(["podman", "rmi", "-f", PODMAN_IMAGE], check=False)

    def rm_later(self, name):
        CLEANUP.push(f"podman container {name}", lambda: run(["podman", "rm", "-f", name], check=False))

    def checkpoint(self, name, archive, compress, leave_running, mode, mib):
        cmd = ["podman", "container", "checkpoint", "--export", archive, "--compress", compress, "--print-stats"]
        if leave_running:
            cmd.append("--leave-running")
        self.b.prep(mode, mib)
        r = timed(cmd + [name])
        return r, podman_stats(r["stdout"])

    def restore(self, archive, name, mode, mib):
        self.rm_later(name)
        self.b.prep(mode, mib)
        return timed(["podman", "container", "restore", "--import", archive, "--name", name, "--print-stats"])

    def cycle(self, mib, comp, mode, tag, rec):
        w1, w2, w3 = f"{tag}-1", f"{tag}-2", f"{tag}-3"
        archive = os.path.join(WORK, f"{tag}.tar")
        CLEANUP.push("archive", lambda: [remove(archive + s) for s in (".zst", "")])
        self.rm_later(w1)
        run(["podman", "run", "-d", "--name", w1] + PODMAN_RUN_FLAGS +
            [PODMAN_IMAGE] + memhog_args(mib, comp, tag, STATE_DIR_IN_CONTAINER))
        pid, (nonce, _) = wait_ready(tag, STATE_DIR_IN_CONTAINER, mib)

        def leave_running():
            r, st = self.checkpoint(w1, archive + ".zst", "zstd", True, mode, mib)
            rec("leave_running_s", r["seconds"])
            record_leave_running_stats(rec, st)
            remove(archive + ".zst")
        optional_step(rec, ["leave_running_s", "leave_running_frozen_ms", "leave_running_criu_frozen_ms"], leave_running)
        c = read_counter(pid, STATE_DIR_IN_CONTAINER)
        verify(tag, STATE_DIR_IN_CONTAINER, nonce, c[1] if c else 0)

        c0 = read_counter(pid, STATE_DIR_IN_CONTAINER)[1]
        r, st = self.checkpoint(w1, archive + ".zst", "zstd", False, mode, mib)
        self.record_export(rec, "export_zstd", r, st, archive + ".zst")
        r = self.restore(archive + ".zst", w2, mode, mib)
        resumed = verify(tag, STATE_DIR_IN_CONTAINER, nonce, c0)
        rec("import_zstd_s", r["seconds"])
        rec("import_zstd_peak_rss_mib", kib_to_mib(r["peak_rss_kib"]))
        rec("gap_zstd_s", self.b.last["export_zstd_s"] + r["seconds"] + resumed)
        remove(archive + ".zst")
        run(["podman", "rm", "-f", w1])

        pid = find_pid(tag)
        c0 = read_counter(pid, STATE_DIR_IN_CONTAINER)[1]
        r, st = self.checkpoint(w2, archive, "none", False, mode, mib)
        self.record_export(rec, "export_none", r, st, archive)
        r = self.restore(archive, w3, mode, mib)
        resumed = verify(tag, STATE_DIR_IN_CONTAINER, nonce, c0)
        rec("import_none_s", r["seconds"])
        rec("import_none_peak_rss_mib", kib_to_mib(r["peak_rss_kib"]))
        rec("gap_none_s", self.b.last["export_none_s"] + r["seconds"] + resumed)
        remove(archive)

    def record_export(self, rec, key, r, st, path):
        rec(f"{key}_s", r["seconds"])
        rec(f"{key}_bytes", size_of(path))
        rec(f"{key}_peak_rss_mib", kib_to_mib(r["peak_rss_kib"]))
        record_criu_dump_stats(rec, key, st)


def podman_stats(text):
    """podman's --print-stats JSON: {"podman_checkpoint_duration": µs, "container_statistics":
    [{"criu_statistics": {...}}]}; returns the CRIU statistics of the one container."""
    try:
        d = json.loads(text[text.index("{"):])
    except ValueError:
        return None
    for c in d.get("container_statistics") or []:
        if c.get("criu_statistics"):
            return c["criu_statistics"]
    return None


class RuncTool(Tool):
    """runc 1.1 on an OCI bundle of the same rootfs: checkpoint to an image directory,
    restore -d from it under a new id. stdio are pipes (CRIU restores them through
    runc's inherit-fd), the bundle has no terminal."""
    name = "runc"

    def setup(self):
        os.makedirs(RUNC_ROOT, exist_ok=True)
        self.remove_all()

    def remove_all(self):
        out, _ = run(["runc", "--root", RUNC_ROOT, "list", "-q"], check=False)
        for cid in out.split():
            if cid.startswith(TAG_PREFIX):
                self.delete(cid)

    def teardown(self):
        self.remove_all()
        shutil.rmtree(RUNC_ROOT, ignore_errors=True)

    def delete(self, cid):
        run(["runc", "--root", RUNC_ROOT, "kill", cid, "KILL"], check=False)
        time.sleep(0.1)
        run(["runc", "--root", RUNC_ROOT, "delete", "-f", cid], check=False)

    def bundle(self, tag, args):
        bdir = os.path.join(WORK, f"{tag}-bundle")
        CLEANUP.push("runc bundle", lambda: remove(bdir))
        os.makedirs(bdir)
        run(["cp", "-a", self.b.rootfs, os.path.join(bdir, "rootfs")])
        run(["runc", "spec"], cwd=bdir)
        path = os.path.join(bdir, "config.json")
        with open(path) as f:
            spec = json.load(f)
        spec["process"]["terminal"] = False
        spec["process"]["args"] = args
        spec["root"] = {"path": "rootfs", "readonly": False}
        spec["hostname"] = "memhog"
        with open(path, "w") as f:
            json.dump(spec, f, indent=2)
        return bdir

    def start(self, cmd):
        """Runs `runc run -d` / `runc restore -d` with three pipes as the container's stdio;
        the bench keeps the other ends until the cycle's cleanup."""
        pipes = [os.pipe() for _ in range(3)]
        stdin_r, stdin_w = pipes[0]
        fds = [stdin_w, pipes[1][0], pipes[2][0]]
        CLEANUP.push("runc stdio pipes", lambda: [os.close(fd) for fd in fds])
        try:
            return timed(cmd, stdin=stdin_r, stdout=pipes[1][1], stderr=pipes[2][1])
        finally:
            for fd in (stdin_r, pipes[1][1], pipes[2][1]):
                os.close(fd)

    def runc(self, *args):
        return ["runc", "--root", RUNC_ROOT, "--log", os.path.join(WORK, "runc.log")] + list(args)

    def cycle(self, mib, comp, mode, tag, rec):
        r1, r2 = f"{tag}-1", f"{tag}-2"
        bdir = self.bundle(tag, memhog_args(mib, comp, tag, STATE_DIR_IN_CONTAINER))
        images = os.path.join(WORK, f"{tag}-images")
        work = os.path.join(WORK, f"{tag}-work")
        CLEANUP.push("runc images", lambda: (remove(images), remove(work)))
        CLEANUP.push(f"runc container {r1}", lambda: self.delete(r1))
        try:
            self.start(self.runc("run", "-d", "--bundle", bdir, r1))
        except BenchError as e:
            raise BenchError(f"{e}; runc.log: {runc_log_tail()}")
        pid, (nonce, _) = wait_ready(tag, STATE_DIR_IN_CONTAINER, mib)

        def leave_running():
            self.b.prep(mode, mib)
            try:
                r = self.checkpoint(r1, images, work, True)
                rec("leave_running_s", r["seconds"])
                st = criu_stats(os.path.join(work, "stats-dump")) or criu_stats(os.path.join(images, "stats-dump"))
                record_leave_running_stats(rec, st)
            finally:
                remove(images)
                remove(work)
        optional_step(rec, ["leave_running_s", "leave_running_frozen_ms", "leave_running_criu_frozen_ms"], leave_running)
        c = read_counter(pid, STATE_DIR_IN_CONTAINER)
        verify(tag, STATE_DIR_IN_CONTAINER, nonce, c[1] if c else 0)

        c0 = read_counter(pid, STATE_DIR_IN_CONTAINER)[1]
        self.b.prep(mode, mib)
        r = self.checkpoint(r1, images, work, False)
        rec("dump_s", r["seconds"])
        rec("dump_bytes", size_of(images))
        record_criu_dump_stats(rec, "dump", criu_stats(os.path.join(work, "stats-dump"))
                               or criu_stats(os.path.join(images, "stats-dump")))
        self.delete(r1)
        CLEANUP.push(f"runc container {r2}", lambda: self.delete(r2))
        self.b.prep(mode, mib)
        try:
            r = self.start(self.runc("restore", "-d", "--image-path", images, "--work-path", work,
                                     "--bundle", bdir, r2))
        except BenchError as e:
            raise BenchError(f"{e}; restore.log: {criu_log_tail(os.path.join(work, 'restore.log'))}")
        resumed = verify(tag, STATE_DIR_IN_CONTAINER, nonce, c0)
        rec("restore_s", r["seconds"])
        rec("gap_s", self.b.last["dump_s"] + r["seconds"] + resumed)

    def checkpoint(self, cid, images, work, leave_running):
        cmd = self.runc("checkpoint", "--image-path", images, "--work-path", work)
        if leave_running:
            cmd.append("--leave-running")
        try:
            return timed(cmd + [cid])
        except BenchError as e:
            raise BenchError(f"{e}; dump.log: {criu_log_tail(os.path.join(work, 'dump.log'))}")


def runc_log_tail():
    return criu_log_tail(os.path.join(WORK, "runc.log"))


def criu_log_tail(path):
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return "(no log)"
    errs = [l for l in lines if "Error" in l or "error" in l] or lines
    return " | ".join(l.strip() for l in errs[-3:])


def record_leave_running_stats(rec, st):
    """A --leave-running dump's frozen time as CRIU's stats report it (the peers'
    frozen time; Ferry reports its own freeze-to-thaw)."""
    if st:
        rec("leave_running_criu_frozen_ms", st.get("frozen_time", 0) / 1000)
        rec("leave_running_frozen_ms", (st.get("frozen_time", 0) + st.get("freezing_time", 0)) / 1000)


def record_criu_dump_stats(rec, key, st):
    if not st:
        return
    rec(f"{key}_frozen_ms", (st.get("frozen_time", 0) + st.get("freezing_time", 0)) / 1000)
    for k, mk in (("freezing_time", "freezingTime"), ("frozen_time", "frozenTime"),
                  ("memdump_time", "memdumpTime"), ("memwrite_time", "memwriteTime")):
        if k in st:
            rec(f"{key}_criu_{mk}_ms", st[k] / 1000)


class CriuTool(Tool):
    """Raw CRIU 4.1.1 on the same memhog outside any container: started with setsid,
    stdio to /dev/null; `criu dump -D dir`, `criu restore -d -D dir`."""
    name = "criu"

    def setup(self):
        pass

    def teardown(self):
        pass

    def cycle(self, mib, comp, mode, tag, rec):
        state = os.path.join(WORK, f"{tag}-state")
        images = os.path.join(WORK, f"{tag}-images")
        os.makedirs(state)
        CLEANUP.push("criu files", lambda: (remove(images), remove(state)))
        CLEANUP.push(f"memhog {tag}", lambda: kill_tagged(tag))
        # setsid -f: memhog's parent becomes init, like a daemon; stdio is /dev/null.
        subprocess.run(["setsid", "-f"] + memhog_args(mib, comp, tag, state, self.b.memhog), env=ENV, cwd=state,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        pid, (nonce, _) = wait_ready(tag, state, mib)

        def leave_running():
            self.b.prep(mode, mib)
            os.makedirs(images)
            try:
                r = self.dump(pid, images, True)
                rec("leave_running_s", r["seconds"])
                st = criu_stats(os.path.join(images, "stats-dump"))
                record_leave_running_stats(rec, st)
            finally:
                remove(images)
        optional_step(rec, ["leave_running_s", "leave_running_frozen_ms", "leave_running_criu_frozen_ms"], leave_running)
        c = read_counter(pid, state)
        verify(tag, state, nonce, c[1] if c else 0)

        c0 = read_counter(pid, state)[1]
        self.b.prep(mode, mib)
        os.makedirs(images)
        r = self.dump(pid, images, False)
        rec("dump_s", r["seconds"])
        rec("dump_bytes", size_of(images))
        record_criu_dump_stats(rec, "dump", criu_stats(os.path.join(images, "stats-dump")))
        # CRIU restores the same PID, so the dumped process must be gone, zombie included;
        # here PID 1 reaps orphans only after a while.
        deadline = time.monotonic() + 60
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)
        self.b.prep(mode, mib)
        try:
            r = timed([CRIU, "restore", "-d", "-D", images, "-o", "restore.log", "-v2"])
        except BenchError as e:
            raise BenchError(f"{e}; restore.log: {criu_log_tail(os.path.join(images, 'restore.log'))}")
        resumed = verify(tag, state, nonce, c0)
        rec("restore_s", r["seconds"])
        rec("gap_s", self.b.last["dump_s"] + r["seconds"] + resumed)
        kill_tagged(tag)
        optional_step(rec, ["lazy_downtime_ms", "lazy_page_rate_bytes_per_s"], lambda: self.lazy(mib, comp, mode, tag, rec))

    def lazy(self, mib, comp, mode, tag, rec):
        """CRIU's own post-copy on one host, the way its documentation runs it: `dump
        --lazy-pages` keeps the memory behind a page server, `lazy-pages --page-server`
        pulls it into `restore --lazy-pages`. The source stays frozen until every page has
        been fetched, so memhog runs in its own pid namespace (the restore makes a new
        one instead of needing the same pids)."""
        set_pipe_max_size(4 << 20)
        state = os.path.join(WORK, f"{tag}-lazy-state")
        images = os.path.join(WORK, f"{tag}-lazy-images")
        work = os.path.join(WORK, f"{tag}-lazy-work")
        for d in (state, images, work):
            os.makedirs(d)
        CLEANUP.push("criu lazy files", lambda: (remove(images), remove(state), remove(work)))
        subprocess.run(["setsid", "-f", "unshare", "--pid", "--fork", "setsid"] + memhog_args(mib, comp, tag, state, self.b.memhog),
                       env=ENV, cwd=state, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        pid, (nonce, _) = wait_ready(tag, state, mib)
        c0 = read_counter(pid, state)[1]
        port = free_port()
        self.b.prep(mode, mib)
        procs = []
        try:
            started = time.monotonic()
            dump = start_with_status([CRIU, "dump", "-t", str(pid), "-D", images, "--lazy-pages", "--address", "127.0.0.1",
                                      "--port", str(port), "-o", "dump.log", "-v2"], "dump", os.path.join(images, "dump.log"))
            procs.append(dump)
            daemon = start_with_status([CRIU, "lazy-pages", "--page-server", "--address", "127.0.0.1", "--port", str(port),
                                        "-D", images, "--work-dir", work, "-o", "lazy-pages.log", "-v2"],
                                       "lazy-pages", os.path.join(work, "lazy-pages.log"))
            procs.append(daemon)
            r = timed([CRIU, "restore", "-d", "-D", images, "--lazy-pages", "--work-dir", work, "-o", "restore.log", "-v2"])
            restored = time.monotonic()
            if daemon.wait(timeout=600) != 0:
                raise BenchError(f"criu lazy-pages failed: {criu_log_tail(os.path.join(work, 'lazy-pages.log'))}")
            arrived = time.monotonic()
            if dump.wait(timeout=600) != 0:
                raise BenchError(f"criu dump --lazy-pages failed: {criu_log_tail(os.path.join(images, 'dump.log'))}")
        except BenchError as e:
            raise BenchError(f"{e}; restore.log: {criu_log_tail(os.path.join(work, 'restore.log'))}")
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        verify(tag, state, nonce, c0)
        # (A lazy dump's stats-dump leaves pages_lazy at 0: count the pagemaps.)
        lazy_bytes = lazy_pages_in(images) * 4096
        rec("lazy_downtime_ms", (restored - started) * 1000)
        rec("lazy_restore_s", r["seconds"])
        if lazy_bytes and arrived > restored:
            rec("lazy_page_rate_bytes_per_s", lazy_bytes / (arrived - restored))
        kill_tagged(tag)

    def dump(self, pid, images, leave_running):
        cmd = [CRIU, "dump", "-t", str(pid), "-D", images, "-o", "dump.log", "-v2"]
        if leave_running:
            cmd.append("--leave-running")
        try:
            return timed(cmd)
        except BenchError as e:
            raise BenchError(f"{e}; dump.log: {criu_log_tail(os.path.join(images, 'dump.log'))}")


def start_with_status(cmd, what, log):
    """Starts a CRIU command with --status-fd and returns once it says it is ready."""
    r, w = os.pipe()
    proc = subprocess.Popen(cmd + ["--status-fd", str(w)], pass_fds=[w], env=ENV,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    ready = os.read(r, 1)
    os.close(r)
    if not ready:
        proc.wait()
        raise BenchError(f"criu {what} exited before it was ready: {criu_log_tail(log)}")
    return proc


def set_pipe_max_size(size):
    """CRIU's lazy dump keeps memory in 4 MiB pipes; root here lacks CAP_SYS_RESOURCE."""
    path = "/proc/sys/fs/pipe-max-size"
    with open(path) as f:
        if int(f.read()) >= size:
            return
    with open(path, "w") as f:
        f.write(str(size))


def mounted_under(path):
    with open("/proc/self/mountinfo") as f:
        return [l.split()[4] for l in f if l.split()[4].startswith(path.rstrip("/") + "/")]


def kill_leftovers():
    """memhogs of an earlier, interrupted run."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if argv[0].endswith(b"memhog") and any(a.startswith(TAG_PREFIX.encode()) for a in argv):
                os.kill(int(d), signal.SIGKILL)
        except (OSError, IndexError):
            pass


def kill_tagged(tag):
    for pid in find_pids(tag):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --------------------------------------------------------------------------------------
# Limits of the machine, measured in the same run

def measure_limits(bench, mib):
    out = {}
    try:
        o, _ = run([bench.memtool, "memcpy", "512"], timeout=120)
        out["memcpy_bytes_per_s"] = float(o.strip())
    except BenchError as e:
        out["memcpy_bytes_per_s"] = {"error": str(e)}
    # fsync'd sequential write in the export directory (WORK), 1 MiB writes.
    path = os.path.join(WORK, "limit-write.bin")
    total = max(mib, 512) << 20
    buf = os.urandom(8 << 20)
    try:
        subprocess.run(["sync"], check=False)
        t0 = time.monotonic()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            written = 0
            mv = memoryview(buf)
            while written < total:
                written += os.write(fd, mv[: min(len(buf), total - written)])
            os.fsync(fd)
        finally:
            os.close(fd)
        out["disk_write_fsync_bytes_per_s"] = total / (time.monotonic() - t0)
    finally:
        remove(path)
    # zstd on the workload's data, both variants, -T0 (all cores) and -T1.
    for comp in (False, True):
        data = os.path.join(WORK, "limit-data.bin")
        n = min(max(mib, 512), 1024)
        try:
            with open(data, "wb") as f:
                subprocess.run([bench.memhog, "--gen"] + (["-c"] if comp else []) + [str(n)], stdout=f, check=True)
            variant = "compressible" if comp else "incompressible"
            # Level 3 is what the issue names; level 1 is what Ferry uses since 42b47a6.
            for level in ("3", "1"):
                for threads in ("0", "1"):
                    _, dt = run(["sh", "-c", f"zstd -q -{level} -T{threads} -c '{data}' | wc -c"], timeout=600)
                    out[f"zstd{level}_T{threads}_{variant}_bytes_per_s"] = (n << 20) / dt
        except (BenchError, subprocess.CalledProcessError) as e:
            out[f"zstd_error_{comp}"] = str(e)
        finally:
            remove(data)
    return out


# --------------------------------------------------------------------------------------
# Summaries, ratios, targets, tables

def summarize(samples):
    nums = [s for s in samples if isinstance(s, (int, float))]
    errs = [s["error"] for s in samples if isinstance(s, dict) and "error" in s]
    out = {"n": len(nums), "failures": len(errs)}
    if nums:
        out.update(min=min(nums), median=statistics.median(nums), max=max(nums))
    if errs:
        out["errors"] = sorted(set(errs))
    return out


def med(summary, tool, metric):
    return ((summary.get(tool) or {}).get(metric) or {}).get("median")


RATIOS = [
    # (name, ferry metric, peer, peer metric)
    ("export_zstd_s", "export_zstd_s", "podman", "export_zstd_s"),
    ("export_none_s", "export_none_s", "podman", "export_none_s"),
    ("import_zstd_s", "import_zstd_s", "podman", "import_zstd_s"),
    ("import_none_s", "import_none_s", "podman", "import_none_s"),
    ("gap_zstd_s", "gap_zstd_s", "podman", "gap_zstd_s"),
    ("export_zstd_bytes", "export_zstd_bytes", "podman", "export_zstd_bytes"),
    ("export_none_bytes", "export_none_bytes", "podman", "export_none_bytes"),
    ("leave_running_frozen_ms", "leave_running_frozen_ms", "podman", "leave_running_frozen_ms"),
    ("export_zstd_s/dump_s", "export_zstd_s", "runc", "dump_s"),
    ("import_zstd_s/restore_s", "import_zstd_s", "runc", "restore_s"),
    ("leave_running_frozen_ms", "leave_running_frozen_ms", "runc", "leave_running_frozen_ms"),
    ("export_zstd_s/dump_s", "export_zstd_s", "criu", "dump_s"),
    ("export_none_s/dump_s", "export_none_s", "criu", "dump_s"),
    ("import_zstd_s/restore_s", "import_zstd_s", "criu", "restore_s"),
    ("import_none_s/restore_s", "import_none_s", "criu", "restore_s"),
    ("leave_running_frozen_ms", "leave_running_frozen_ms", "criu", "leave_running_frozen_ms"),
    ("leave_running_frozen_ms/criu_frozen_time", "leave_running_frozen_ms", "criu", "leave_running_criu_frozen_ms"),
    ("migrate_lazy_downtime_ms/lazy_downtime_ms", "migrate_lazy_downtime_ms", "criu", "lazy_downtime_ms"),
    ("migrate_lazy_page_rate/lazy_page_rate (higher is better)", "migrate_lazy_page_rate_bytes_per_s", "criu", "lazy_page_rate_bytes_per_s"),
]


def ratios(summary):
    out = {}
    for name, fm, peer, pm in RATIOS:
        f, p = med(summary, "ferry", fm), med(summary, peer, pm)
        out.setdefault(f"ferry/{peer}", {})[name] = (f / p) if f is not None and p else None
    return out


def fractions(summary, limits, mib):
    """Ferry's throughput as a fraction of the machine's limit (1.0 = at the limit)."""
    lim = {k: statistics.median([x for x in v if isinstance(x, (int, float))]) for k, v in limits.items()
           if any(isinstance(x, (int, float)) for x in v)}
    mem_bytes = mib << 20
    out = {}
    disk = lim.get("disk_write_fsync_bytes_per_s")
    z = lim.get("zstd3_T0_incompressible_bytes_per_s")
    mc = lim.get("memcpy_bytes_per_s")
    t = med(summary, "ferry", "export_none_s")
    if t and disk:
        out["export_none: archive bytes/s vs fsync'd disk write"] = (med(summary, "ferry", "export_none_bytes") / t) / disk
    t = med(summary, "ferry", "export_zstd_s")
    if t and z:
        out["export_zstd: memory bytes/s vs zstd -3 -T0"] = (mem_bytes / t) / z
    t = med(summary, "ferry", "import_none_s")
    if t and mc:
        out["import_none: memory bytes/s vs memcpy"] = (mem_bytes / t) / mc
    t = med(summary, "ferry", "import_zstd_s")
    if t and mc:
        out["import_zstd: memory bytes/s vs memcpy"] = (mem_bytes / t) / mc
    return out


def evaluate_targets(results, target_size):
    """The issue's targets, on the 2048 MiB incompressible case (or the largest size run),
    judged on medians, per mode."""
    def s(variant, mode):
        return ((results.get(str(target_size)) or {}).get(variant) or {}).get(mode) or {}

    def judge(check):
        per_mode = {}
        for mode in ("cold", "warm"):
            try:
                per_mode[mode] = check(mode)
            except (TypeError, ZeroDivisionError, KeyError):
                per_mode[mode] = {"met": None, "detail": "missing data"}
        return per_mode

    def le(a, b, factor, label):
        if a is None or b is None:
            return {"met": None, "detail": f"missing data ({label})"}
        if label == "bytes":
            detail = f"{a / 1048576:.1f} MiB vs {factor} x {b / 1048576:.1f} MiB"
        else:
            detail = f"{a:.3f} vs {factor} x {b:.3f} = {factor * b:.3f} ({label})"
        return {"met": a <= factor * b, "ferry": a, "limit": factor * b, "detail": detail}

    sumd = lambda v, m: s(v, m).get("summary") or {}
    targets = []
    targets.append(("checkpoint --export (zstd) <= 0.5 x podman's", judge(lambda m: le(
        med(sumd("incompressible", m), "ferry", "export_zstd_s"), med(sumd("incompressible", m), "podman", "export_zstd_s"), 0.5, "s"))))
    targets.append(("checkpoint --export (zstd) <= 1.3 x raw criu dump", judge(lambda m: le(
        med(sumd("incompressible", m), "ferry", "export_zstd_s"), med(sumd("incompressible", m), "criu", "dump_s"), 1.3, "s"))))
    targets.append(("restore --import <= 0.3 x podman's", judge(lambda m: le(
        med(sumd("incompressible", m), "ferry", "import_zstd_s"), med(sumd("incompressible", m), "podman", "import_zstd_s"), 0.3, "s"))))
    targets.append(("restore --import <= 1.5 x raw criu restore", judge(lambda m: le(
        med(sumd("incompressible", m), "ferry", "import_zstd_s"), med(sumd("incompressible", m), "criu", "restore_s"), 1.5, "s"))))
    targets.append(("--leave-running frozen time <= raw CRIU's frozen time", judge(lambda m: le(
        med(sumd("incompressible", m), "ferry", "leave_running_frozen_ms"), med(sumd("incompressible", m), "criu", "leave_running_criu_frozen_ms"), 1.0, "ms; Ferry's freeze-to-thaw vs CRIU's frozen_time"))))
    for variant in ("incompressible", "compressible"):
        targets.append((f"archive size <= podman's zstd archive ({variant})", judge(lambda m, v=variant: le(
            med(sumd(v, m), "ferry", "export_zstd_bytes"), med(sumd(v, m), "podman", "export_zstd_bytes"), 1.0, "bytes"))))

    def rss(mode):
        worst = None
        for size, by_variant in results.items():
            for variant, by_mode in by_variant.items():
                sm = ((by_mode.get(mode) or {}).get("summary") or {}).get("ferry") or {}
                for k, v in sm.items():
                    if k.endswith("peak_rss_mib") and "descendants" not in k and "max" in v:
                        if worst is None or v["max"] > worst[0]:
                            worst = (v["max"], f"{k} at {size} MiB {variant}")
        if worst is None:
            return {"met": None, "detail": "missing data"}
        return {"met": worst[0] <= 64, "ferry": worst[0], "limit": 64,
                "detail": f"max {worst[0]:.1f} MiB ({worst[1]}), all sizes"}
    targets.append(("Ferry's own memory during export and import <= 64 MiB", judge(rss)))
    def lazy_downtime_s(m):
        v = med(sumd("incompressible", m), "ferry", "migrate_lazy_downtime_ms")
        return None if v is None else v / 1000
    targets.append(("migration lazy downtime <= 0.5 s", judge(lambda m: le(lazy_downtime_s(m), 0.5, 1.0, "s"))))

    def downtime_s(m):
        v = med(sumd("incompressible", m), "ferry", "migrate_stop_copy_downtime_ms")
        return None if v is None else v / 1000

    def raw_sum(m):
        d, r = med(sumd("incompressible", m), "criu", "dump_s"), med(sumd("incompressible", m), "criu", "restore_s")
        return None if d is None or r is None else d + r
    targets.append(("migration stop-copy downtime <= 1.2 x (raw dump + raw restore)", judge(lambda m: le(
        downtime_s(m), raw_sum(m), 1.2, "s"))))
    targets.append(("migration stop-copy downtime <= 0.25 x podman export -> import gap", judge(lambda m: le(
        downtime_s(m), med(sumd("incompressible", m), "podman", "gap_zstd_s"), 0.25, "s"))))
    return [{"target": t, "size_mib": target_size, **v} for t, v in targets]


def fmt(v, metric):
    if v is None:
        return "-"
    if metric.endswith(("_bytes", "_bytes_sent")):
        return f"{v / 1048576:.1f}M"
    if metric.endswith("_ms"):
        return f"{v:.0f}ms"
    if metric.endswith("_mib"):
        return f"{v:.1f}M"
    if metric.endswith("_bytes_per_s"):
        return f"{v / 1e6:.0f}MB/s"
    if metric.endswith("_pages_lazily"):
        return f"{v:.0f}"
    return f"{v:.2f}s"


def cell(sm, metric):
    s = sm.get(metric)
    if not s:
        return "-"
    if s.get("n", 0) == 0:
        return "FAILED" if s.get("failures") else "-"
    txt = fmt(s["median"], metric)
    if s["n"] > 1:
        txt += f" [{fmt(s['min'], metric)}-{fmt(s['max'], metric)}]"
    if s.get("failures"):
        txt += f" ({s['failures']} failed)"
    return txt


TABLE_ROWS = [
    # (label, {tool: metric})
    ("checkpoint+export zstd", {"ferry": "export_zstd_s", "podman": "export_zstd_s"}),
    ("checkpoint+export none / dump to dir", {"ferry": "export_none_s", "podman": "export_none_s", "runc": "dump_s", "criu": "dump_s"}),
    ("restore/import from zstd", {"ferry": "import_zstd_s", "podman": "import_zstd_s"}),
    ("restore/import from none / dir", {"ferry": "import_none_s", "podman": "import_none_s", "runc": "restore_s", "criu": "restore_s"}),
    ("app gap export->import (zstd)", {"ferry": "gap_zstd_s", "podman": "gap_zstd_s"}),
    ("app gap dump->restore (none/dir)", {"ferry": "gap_none_s", "podman": "gap_none_s", "runc": "gap_s", "criu": "gap_s"}),
    ("leave-running frozen time", {"ferry": "leave_running_frozen_ms", "podman": "leave_running_frozen_ms", "runc": "leave_running_frozen_ms", "criu": "leave_running_frozen_ms"}),
    ("  of which CRIU frozen_time", {"ferry": "leave_running_criu_frozen_ms", "podman": "leave_running_criu_frozen_ms", "runc": "leave_running_criu_frozen_ms", "criu": "leave_running_criu_frozen_ms"}),
    ("archive size zstd", {"ferry": "export_zstd_bytes", "podman": "export_zstd_bytes"}),
    ("archive size none / images", {"ferry": "export_none_bytes", "podman": "export_none_bytes", "runc": "dump_bytes", "criu": "dump_bytes"}),
    ("snapshot create, first", {"ferry": "snapshot_first_s"}),
    ("  frozen", {"ferry": "snapshot_first_frozen_ms"}),
    ("  new data stored", {"ferry": "snapshot_first_own_bytes"}),
    ("snapshot create, second", {"ferry": "snapshot_second_s"}),
    ("  frozen", {"ferry": "snapshot_second_frozen_ms"}),
    ("  new data stored", {"ferry": "snapshot_second_own_bytes"}),
    ("migrate stop-copy: downtime", {"ferry": "migrate_stop_copy_downtime_ms"}),
    ("  total (ferry's total_ms)", {"ferry": "migrate_stop_copy_total_ms"}),
    ("  bytes sent", {"ferry": "migrate_stop_copy_bytes_sent"}),
    ("migrate lazy: downtime", {"ferry": "migrate_lazy_downtime_ms", "criu": "lazy_downtime_ms"}),
    ("  total, until the source is free", {"ferry": "migrate_lazy_total_ms"}),
    ("  pages after the switch", {"ferry": "migrate_lazy_pages_lazily"}),
    ("  background page rate", {"ferry": "migrate_lazy_page_rate_bytes_per_s", "criu": "lazy_page_rate_bytes_per_s"}),
    ("peak RSS export zstd (tool process)", {"ferry": "export_zstd_peak_rss_mib", "podman": "export_zstd_peak_rss_mib"}),
    ("peak RSS import zstd (tool process)", {"ferry": "import_zstd_peak_rss_mib", "podman": "import_zstd_peak_rss_mib"}),
]
TOOLS_ORDER = ["ferry", "podman", "runc", "criu"]


def tables(results, markdown=False):
    lines = []
    for size, by_variant in results.items():
        for variant, by_mode in by_variant.items():
            for mode, d in by_mode.items():
                sm = d.get("summary") or {}
                tools = [t for t in TOOLS_ORDER if t in sm]
                title = f"{size} MiB, {variant}, {mode} (median [min-max] of {d.get('reps', '?')})"
                rows = []
                for label, metrics in TABLE_ROWS:
                    vals = [cell(sm.get(t) or {}, metrics[t]) if t in metrics else "" for t in tools]
                    if any(v not in ("", "-") for v in vals):
                        rows.append([label] + vals)
                for key, text in PLACEHOLDERS.items():
                    rows.append([key.split(".", 1)[1].replace("_", " ")] + [NOT_IMPLEMENTED if t == "ferry" else "" for t in tools])
                header = ["", *tools]
                if markdown:
                    lines.append(f"\n#### {title}\n")
                    lines.append("| " + " | ".join(header) + " |")
                    lines.append("|" + "---|" * len(header))
                    lines += ["| " + " | ".join(r) + " |" for r in rows]
                else:
                    w = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
                    lines.append(f"\n== {title}")
                    lines.append("  ".join(h.ljust(w[i]) for i, h in enumerate(header)))
                    lines += ["  ".join(str(c).ljust(w[i]) for i, c in enumerate(r)) for r in rows]
    return "\n".join(lines)


def target_lines(targets, markdown=False):
    out = []
    for t in targets:
        parts = []
        for mode in ("cold", "warm"):
            v = t[mode]
            state = "met" if v["met"] else ("not met" if v["met"] is False else "n/a")
            parts.append(f"{mode}: {state} ({v['detail']})")
        out.append((f"- **{t['target']}**: " if markdown else f"  {t['target']}: ") + "; ".join(parts))
    return "\n".join(out)


# --------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.prep = None
        self.last = {}

    def build_helpers(self):
        os.makedirs(os.path.join(WORK, "bin"), exist_ok=True)
        self.memhog = os.path.join(WORK, "bin", "memhog")
        self.memtool = os.path.join(WORK, "bin", "memtool")
        run(["gcc", "-static", "-O2", "-Wall", "-o", self.memhog, os.path.join(HERE, "memhog.c")])
        run(["gcc", "-static", "-O2", "-Wall", "-o", self.memtool, os.path.join(HERE, "memtool.c")])
        self.prep = Prep(self.memtool, self.args.settle)
        self.rootfs = os.path.join(WORK, "rootfs")
        remove(self.rootfs)
        run(["bash", os.path.join(REPO, "scripts", "busybox-rootfs.sh"), self.rootfs])
        shutil.copy2(self.memhog, os.path.join(self.rootfs, "bin", "memhog"))

    def machine(self):
        info = {"kernel": platform.release(), "cores": os.cpu_count()}
        try:
            with open("/proc/cpuinfo") as f:
                m = re.search(r"model name\s*:\s*(.*)", f.read())
                info["cpu"] = m.group(1) if m else "?"
            with open("/proc/meminfo") as f:
                info["memory_gib"] = round(int(f.readline().split()[1]) / 1048576, 1)
        except OSError:
            pass
        for name, cmd in (("criu", [CRIU, "--version"]), ("podman", ["podman", "--version"]),
                          ("runc", ["runc", "--version"]), ("zstd", ["zstd", "--version"]),
                          ("ferry_commit", ["git", "-C", self.args.ferry_source, "rev-parse", "--short", "HEAD"]),
                          ("ferry_version", [self.args.ferry, "--version"])):
            o, _ = run(cmd, check=False)
            info[name] = (o.strip().splitlines() or ["?"])[0]
        try:
            with open("/etc/debian_version") as f:
                info["debian"] = f.read().strip()
        except OSError:
            pass
        info["cgroups"] = "hybrid" if os.path.isdir("/sys/fs/cgroup/unified") else (
            "v2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "v1")
        return info

    def main(self):
        a = self.args
        sizes = [int(x) for x in a.sizes.split(",")]
        tools_wanted = a.tools.split(",")
        os.makedirs(WORK, exist_ok=True)
        log(f"work dir {WORK}; sizes {sizes} MiB; {a.reps} repetition(s); tools {tools_wanted}")
        kill_leftovers()
        self.build_helpers()
        all_tools = {"ferry": lambda: FerryTool(self, a.ferry), "podman": lambda: PodmanTool(self),
                     "runc": lambda: RuncTool(self), "criu": lambda: CriuTool(self)}
        tools, setup_errors = [], {}
        for n in tools_wanted:
            t = all_tools[n]()
            try:
                t.setup()
                tools.append(t)
            except BenchError as e:
                log(f"{n}: setup failed: {e}")
                setup_errors[n] = str(e)
        started = datetime.datetime.now(datetime.timezone.utc)
        raw = {}      # size -> variant -> mode -> tool -> metric -> [samples]
        limits = {}   # size -> limit -> [samples]
        variants = [("incompressible", False, a.reps, ["cold", "warm"], [t.name for t in tools])]
        if not a.no_compressible:
            variants.append(("compressible", True, 1, ["warm"], [t.name for t in tools if t.name in ("ferry", "podman")]))
        counter = 0
        try:
            for mib in sizes:
                for variant, comp, reps, modes, names in variants:
                    for rep in range(reps):
                        if variant == "incompressible":
                            log(f"{mib} MiB: limits (repetition {rep + 1})")
                            for k, v in measure_limits(self, mib).items():
                                limits.setdefault(str(mib), {}).setdefault(k, []).append(v)
                        for mode in modes:
                            order = [t for t in tools if t.name in names]
                            k = (rep + modes.index(mode)) % len(order) if order else 0
                            order = order[k:] + order[:k]
                            for tool in order:
                                counter += 1
                                tag = f"{TAG_PREFIX}{tool.name}-{mib}-{variant[0]}-{mode}-{rep}-{counter}"
                                self.one_cycle(tool, mib, comp, mode, tag,
                                               raw.setdefault(str(mib), {}).setdefault(variant, {}).setdefault(mode, {}).setdefault(tool.name, {}))
        except KeyboardInterrupt:
            log("interrupted: cleaning up")
            CLEANUP.run()
            for t in tools:
                t.teardown()
            raise
        finally:
            CLEANUP.run()
        for t in tools:
            t.teardown()
        finished = datetime.datetime.now(datetime.timezone.utc)

        results = {}
        for size, bv in raw.items():
            for variant, bm in bv.items():
                for mode, bt in bm.items():
                    summary = {tool: {m: summarize(s) for m, s in metrics.items()} for tool, metrics in bt.items()}
                    entry = {"reps": a.reps if variant == "incompressible" else 1, "raw": bt, "summary": summary,
                             "ratios": ratios(summary)}
                    if variant == "incompressible" and size in limits:
                        entry["fraction_of_limits"] = fractions(summary, limits[size], int(size))
                    results.setdefault(size, {}).setdefault(variant, {})[mode] = entry
        target_size = 2048 if "2048" in results else max(int(s) for s in results) if results else 0
        targets = evaluate_targets(results, target_size) if results else []
        doc = {
            "schema": 1,
            "command": "make bench-quick" if a.quick else "make bench",
            "argv": sys.argv,
            "started": started.isoformat(timespec="seconds"),
            "finished": finished.isoformat(timespec="seconds"),
            "machine": self.machine(),
            "config": {"sizes_mib": sizes, "reps": a.reps, "modes": ["cold", "warm"], "cold_settle_s": a.settle,
                       "warm_up": "sync, then memtool warm (2 x size + 256) MiB: touch and free, untimed",
                       "cold": f"sync, then sleep {a.settle} s",
                       "tools": [t.name for t in tools], "work_dir": WORK,
                       "podman_flags": PODMAN_RUN_FLAGS, "criu": CRIU},
            "setup_errors": setup_errors,
            "limits": {size: {k: {"samples": v, **summarize(v)} for k, v in lv.items()} for size, lv in limits.items()},
            "results": results,
            "targets": targets,
            "not_implemented": {k: f"{v}: {NOT_IMPLEMENTED}" for k, v in PLACEHOLDERS.items()},
        }
        os.makedirs(a.out_dir, exist_ok=True)
        with open(os.path.join(a.out_dir, "latest.json"), "w") as f:
            json.dump(doc, f, indent=1, sort_keys=False)
            f.write("\n")
        md = [f"Command: `{doc['command']}`, {doc['started']} to {doc['finished']}",
              "", "Machine: " + ", ".join(f"{k} {v}" for k, v in doc["machine"].items()), ""]
        md.append("Limits (median of the run):")
        for size, lv in doc["limits"].items():
            md.append(f"- {size} MiB: " + ", ".join(
                f"{k} {v['median'] / 1e9:.2f} GB/s" for k, v in lv.items() if "median" in v))
        md.append(tables(results, markdown=True))
        md += ["", "Targets:", target_lines(targets, markdown=True)]
        with open(os.path.join(a.out_dir, "latest.md"), "w") as f:
            f.write("\n".join(md) + "\n")
        print(tables(results))
        print("\nLimits:")
        for size, lv in doc["limits"].items():
            print(f"  {size} MiB: " + ", ".join(f"{k} {v['median'] / 1e9:.2f} GB/s" for k, v in lv.items() if "median" in v))
        print("\nRatios (medians):")
        for size, bv in results.items():
            for mode, d in (bv.get("incompressible") or {}).items():
                for peer, rs in d["ratios"].items():
                    txt = ", ".join(f"{k} {v:.2f}" for k, v in rs.items() if v is not None)
                    print(f"  {size} MiB {mode} {peer}: {txt or '-'}")
                fl = d.get("fraction_of_limits") or {}
                if fl:
                    print(f"  {size} MiB {mode} ferry / limit: " + ", ".join(f"{k} {v:.2f}" for k, v in fl.items()))
        print(f"\nTargets ({target_size} MiB):")
        print(target_lines(targets))
        print("\nNot implemented yet: " + ", ".join(PLACEHOLDERS))
        print(f"\nWrote {os.path.join(a.out_dir, 'latest.json')} and latest.md")

    def one_cycle(self, tool, mib, comp, mode, tag, store):
        log(f"{tag}: start")
        self.last = {}

        def rec(metric, value):
            if value is None:
                return
            self.last[metric] = value
            store.setdefault(metric, []).append(value)

        keep = len(CLEANUP.actions)
        t0 = time.monotonic()
        try:
            tool.cycle(mib, comp, mode, tag, rec)
            log(f"{tag}: done in {time.monotonic() - t0:.1f} s: " +
                ", ".join(f"{k}={v:.3g}" for k, v in self.last.items() if isinstance(v, (int, float))))
        except BenchError as e:
            log(f"{tag}: FAILED: {e}")
            # The step that failed and every later step of this cycle count as failures.
            store.setdefault("cycle_errors", []).append({"error": str(e)})
            for metric in tool_metrics(tool.name):
                if metric not in self.last:
                    store.setdefault(metric, []).append({"error": str(e)})
        finally:
            CLEANUP.run(keep)
            kill_tagged(tag)


def tool_metrics(name):
    return sorted({m[name] for _, m in TABLE_ROWS if name in m})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="512 MiB only, one repetition")
    p.add_argument("--sizes", default="64,512,2048")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--tools", default="ferry,podman,runc,criu")
    p.add_argument("--ferry", default=os.path.join(REPO, ".build-bench", "release", "ferry"))
    p.add_argument("--ferry-source", default=REPO, help="the package the ferry binary was built from")
    p.add_argument("--settle", type=float, default=2.0, help="seconds of rest before a cold step")
    p.add_argument("--no-compressible", action="store_true", help="skip the compressible-data variant")
    p.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    a = p.parse_args()
    if a.quick:
        a.sizes, a.reps = "512", 1
    if os.geteuid() != 0:
        sys.exit("bench: must run as root")
    if not os.access(a.ferry, os.X_OK):
        sys.exit(f"bench: no ferry binary at {a.ferry} (make bench builds it)")
    signal.signal(signal.SIGTERM, on_signal)
    try:
        Bench(a).main()
    except KeyboardInterrupt:
        sys.exit("bench: interrupted; everything it started has been removed")


if __name__ == "__main__":
    main()
