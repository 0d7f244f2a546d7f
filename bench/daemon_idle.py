#!/usr/bin/env python3
"""Idle cost of `autoinvoice serve` with many tenants armed, and its time to READY.

Creates a fresh database with N tenants (weekly, biweekly and monthly, in 24 zones; no
conversions, nothing due), starts the release binary with NOTIFY_SOCKET, measures the time
from exec to READY=1, then CPU time (utime + stime from /proc) and RSS over an idle window.

    cargo build --release
    python3 bench/daemon_idle.py [--tenants 10000] [--seconds 60] [--db sqlite|postgres]
"""
import argparse, os, socket, sqlite3, subprocess, sys, tempfile, time

ZONES = ["Europe/Paris", "America/New_York", "Asia/Tokyo", "Asia/Kathmandu", "America/Asuncion",
         "Australia/Sydney", "Europe/London", "America/Los_Angeles", "Asia/Kolkata", "UTC",
         "Africa/Cairo", "America/Sao_Paulo", "Pacific/Auckland", "Asia/Dubai", "Europe/Berlin",
         "America/Chicago", "Asia/Shanghai", "Europe/Moscow", "America/Mexico_City",
         "Asia/Singapore", "Africa/Lagos", "America/Santiago", "Asia/Tehran", "Pacific/Apia"]
SCHEDULES = ["weekly", "biweekly", "monthly"]
BIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "autoinvoice")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def memory(pid):
    status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status") if ":" in line)
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tenants", type=int, default=10000)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="autoinvoice-idle-")
    config = os.path.join(work, "empty.toml")
    open(config, "w").close()
    rows = [(i, f"Tenant {i}", ZONES[i % len(ZONES)], SCHEDULES[i % len(SCHEDULES)])
            for i in range(1, args.tenants + 1)]
    if args.db == "sqlite":
        path = os.path.join(work, "idle.db")
        url = f"sqlite://{path}?mode=rwc"
        subprocess.run([BIN, "--config", config, "--database-url", url, "migrate"], check=True,
                       stdout=subprocess.DEVNULL)
        con = sqlite3.connect(path)
        con.executemany("INSERT INTO tenants (id, name, timezone, invoice_schedule) VALUES (?,?,?,?)", rows)
        con.commit()
        con.close()
    else:
        name = f"autoinvoice_idle_{os.getpid()}"
        subprocess.run(["psql", f"{args.pg}/postgres", "-qc", f"CREATE DATABASE {name}"], check=True)
        url = f"{args.pg}/{name}"
        subprocess.run([BIN, "--config", config, "--database-url", url, "migrate"], check=True,
                       stdout=subprocess.DEVNULL)
        values = ",".join(f"({i},'{n}','{z}','{s}')" for i, n, z, s in rows)
        subprocess.run(["psql", url, "-q"], check=True, text=True,
                       input=f"INSERT INTO tenants (id, name, timezone, invoice_schedule) VALUES {values};")
    sock_path = os.path.join(work, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(300)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOINVOICE")}
    env.update(NOTIFY_SOCKET=sock_path, RUST_LOG="warn")
    t0 = time.monotonic()
    proc = subprocess.Popen([BIN, "--config", config, "--database-url", url, "serve"], env=env)
    while True:
        msg = sock.recv(4096).decode()
        if "READY=1" in msg.split("\n"):
            break
    ready = time.monotonic() - t0
    cpu_at_ready = cpu_seconds(proc.pid)
    time.sleep(5)  # let start-up allocations settle
    cpu0 = cpu_seconds(proc.pid)
    time.sleep(args.seconds)
    cpu1 = cpu_seconds(proc.pid)
    rss, hwm = memory(proc.pid)
    proc.terminate()
    proc.wait(timeout=60)
    print(f"tenants={args.tenants} db={args.db}")
    print(f"start to READY: {ready:.2f} s (CPU {cpu_at_ready:.2f} s)")
    print(f"idle {args.seconds} s: CPU {cpu1 - cpu0:.3f} s ({100 * (cpu1 - cpu0) / args.seconds:.3f} % of one core)")
    print(f"RSS {rss:.1f} MiB (peak {hwm:.1f} MiB)")
    if args.db == "postgres":
        subprocess.run(["psql", f"{args.pg}/postgres", "-qc", f"DROP DATABASE {name} WITH (FORCE)"])


if __name__ == "__main__":
    sys.exit(main())
