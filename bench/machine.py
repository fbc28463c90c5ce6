"""The machine's load while a benchmark runs (loadavg, steal, the CPU of other processes than
ours) and the memory of a process tree: shared by bench/run.py and bench/cluster.py."""

import os
import resource
import time

LIVE = {}  # pid -> name of every server process group running now


# A run is noisy when the hypervisor took more than this share of the CPU time (steal), or when
# processes other than the measured server(s) and the load generator kept more than this many
# cores busy on average (another build, another benchmark).
NOISY_STEAL_PCT = 5.0
NOISY_OTHER_CORES = 0.25


def cpu_times():
    """(busy, steal, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return user + nice + system + irq + softirq, steal, sum(fields[:8])


def proc_tree_jiffies(pids):
    """utime+stime (with reaped children's) of the processes in `pids` and all below them."""
    stats, children = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    rest = f.read().rsplit(")", 1)[1].split()
                stats[int(entry)] = sum(int(x) for x in rest[11:15])
                children.setdefault(int(rest[1]), []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    total, todo, seen = 0, list(pids), set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += stats.get(p, 0)
        todo.extend(children.get(p, []))
    return total


def own_jiffies():
    """CPU time of the live servers (and bench/cluster.py's background loadgens), of this
    harness's reaped children (loadgen, its workers) and of the harness itself."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    me = resource.getrusage(resource.RUSAGE_SELF)  # the cluster cells' notice receiver
    hz = os.sysconf("SC_CLK_TCK")
    return proc_tree_jiffies(LIVE) + (ru.ru_utime + ru.ru_stime + me.ru_utime + me.ru_stime) * hz


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


class Load:
    """The machine's load over an interval: loadavg at both ends, steal and the CPU used by
    other processes than ours, from /proc/stat and /proc/PID/stat deltas."""

    def __init__(self):
        self.t0, self.cpu0, self.own0 = time.time(), cpu_times(), own_jiffies()
        self.loadavg0 = loadavg()

    def done(self):
        busy1, steal1, total1 = cpu_times()
        own1 = own_jiffies()
        busy0, steal0, total0 = self.cpu0
        dtotal = max(total1 - total0, 1)
        cores = os.cpu_count() or 1
        other = max(0.0, (busy1 - busy0) - (own1 - self.own0)) / dtotal * cores
        steal = (steal1 - steal0) / dtotal * 100
        busy = (busy1 - busy0) / dtotal * cores
        out = {"secs": round(time.time() - self.t0, 1), "loadavg_start": self.loadavg0,
               "loadavg_end": loadavg(), "steal_pct": round(steal, 2),
               "busy_cores": round(busy, 2), "other_cores": round(other, 2)}
        out["noisy"] = steal > NOISY_STEAL_PCT or other > NOISY_OTHER_CORES
        return out


def tree_rss_kib(pid):
    """VmRSS of a process and all its descendants, in KiB (None when it cannot be read)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total or None


