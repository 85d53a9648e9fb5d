#!/usr/bin/env python3
"""Runs the exact-erasure cases against a dsr binary and judges each by reading the stores
directly: the SQLite tables and the recordings directory, against the ground truth that
`dsr seed --messy` prints. Nothing here asks the service what it erased.

    scripts/messy-audit.py [--seed-bin DSR] [--bin DSR]

`--seed-bin` must know `seed --messy` (this version); `--bin` is the dsr under test (default: the
same), e.g. an older build, to show what it did on the same data. Each case runs on fresh data in
its own directory, on the embedded default (SQLite and a local recordings directory).
"""
import argparse
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

TENANT = "acme"
STORES = {
    "accounts": "SELECT id FROM accounts WHERE tenant_id = ? AND (email IS NOT NULL OR phone IS NOT NULL OR name IS NOT NULL)",
    "call_logs": "SELECT id FROM call_logs WHERE tenant_id = ?",
    "transcripts": "SELECT id FROM transcripts WHERE tenant_id = ?",
    "recordings": "SELECT id FROM recordings WHERE tenant_id = ?",
    "billing": "SELECT id FROM billing_records WHERE tenant_id = ? AND restricted_at IS NULL",
}

# (case, the caller's flags, the people whose data should go; empty: a refusal is right)
CASES = [
    ("mixed-case email, national phone formats, awkward keys", ["--email", "mixed.case@example.com"], ["mixed_case"]),
    ("padded email", ["--email", "padded@example.com"], ["padded"]),
    ("two people in one request", ["--email", "signup@example.com", "--phone", "+15550001009"], []),
    ("shared family phone, by one member's account id", ["--account-id", f"{TENANT}-m-fam-a"], ["family_a"]),
    ("shared family phone, by the phone", ["--phone", "+15550001003"], []),
    ("duplicate email", ["--email", "dup@example.com"], []),
    ("anonymous caller in a national format", ["--phone", "+15550001008"], ["anonymous"]),
    ("calls before signup", ["--email", "signup@example.com"], ["before_signup"]),
    ("calls linked only by account id", ["--email", "acct.only@example.com"], ["account_only"]),
]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def live(db):
    con = sqlite3.connect(db)
    out = {store: {r[0] for r in con.execute(sql, (TENANT,))} for store, sql in STORES.items()}
    con.close()
    return out


def run_case(seed_bin, bin_, name, flags, targets):
    work = tempfile.mkdtemp(prefix="dsr-messy-")
    data = os.path.join(work, "dsr-data")
    # No /metrics port: each case's server is alone, and 9090 may be taken on the machine.
    env = dict(os.environ, DSR_DATA_DIR=data, DSR_METRICS_LISTEN="off")
    env.pop("DATABASE_URL", None)
    lines = subprocess.run([seed_bin, "seed", "--messy", "--tenant", TENANT], env=env, check=True,
                           capture_output=True, text=True, timeout=120).stdout.splitlines()
    people = {p["label"]: p for p in map(json.loads, lines) if "label" in p}
    shared = [json.loads(l) for l in lines if "unattributed" in l][0]["unattributed"]
    db = os.path.join(data, "dsr.db")
    if bin_ != seed_bin:
        # An older build does not know this version's ledger migrations: forget them (the
        # platform tables are what matter here).
        con = sqlite3.connect(db)
        con.execute("DELETE FROM _sqlx_migrations WHERE version >= 20261201000000")
        con.commit()
        con.close()
    port = free_port()
    server = subprocess.Popen([bin_, "serve", "--listen", f"127.0.0.1:{port}"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        before = live(db)
        r = subprocess.run([bin_, "delete", "--server", f"http://127.0.0.1:{port}", "--tenant", TENANT, *flags,
                            "--watch"], env=env, capture_output=True, text=True, timeout=120)
        heads = [l for l in r.stdout.splitlines() if l.startswith("request ")]
        said = heads[-1] if heads else r.stderr.strip()
        final = r.stdout[r.stdout.rfind("request "):] if heads else ""
        verified = sum(1 for l in final.splitlines() if " yes " in l or l.rstrip().endswith(" yes"))
        after = live(db)
    finally:
        server.terminate()
        server.wait()
    recordings = os.path.join(data, "recordings")
    missed, over = 0, 0
    for label, p in people.items():
        theirs = sum(len(set(p["records"].get(s, [])) & after[s]) for s in STORES)
        objects = sum(os.path.exists(os.path.join(recordings, k.lstrip("/"))) for k in p["objects"])
        if label in targets:
            missed += theirs + objects
        else:
            gone = sum(len(set(p["records"].get(s, [])) & (before[s] - after[s])) for s in STORES)
            over += gone + (len(p["objects"]) - objects)
    over += sum(len(set(shared.get(s, [])) & (before[s] - after[s])) for s in STORES)
    status = "refused" if r.returncode != 0 else said.split()[-1] if said else "?"
    expected = "refused" if not targets else "COMPLETED"
    ok = status == expected and missed == 0 and over == 0
    print(f"{'ok  ' if ok else 'FAIL'} {name}: the service said {status}"
          f"{f' ({verified} stores verified)' if r.returncode == 0 else ''}; "
          f"left of the person's data: {missed}; other people's data erased: {over}")
    return ok


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default = os.path.join(here, "..", "target", "debug", "dsr")
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed-bin", default=default)
    ap.add_argument("--bin", default=None)
    args = ap.parse_args()
    bin_ = args.bin or args.seed_bin
    results = [run_case(args.seed_bin, bin_, *case) for case in CASES]
    print(f"{sum(results)} passed, {len(results) - sum(results)} failed")
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
