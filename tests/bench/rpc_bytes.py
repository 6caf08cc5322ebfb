#!/usr/bin/env python3
"""Bytes ggml's RPC protocol moves per token, and what a link would add.

Starts two `corral worker`s on loopback, puts a counting TCP relay in front of each, and
runs `corral bench --rpc` through the relays three times on the same model: generation
only (`--pp 0 --tg TG`), prompt only (`--pp PP --tg 0`) and neither (`--pp 0 --tg 0`:
the model load and the warm-up token). The differences, divided by the tokens, are the
bytes per generated token and per prompt token, each way. From them and the round trips
per token (the relay counts the client's messages), it prints what a 1 Gbit and a 10
Gbit link would add per generated token: bytes x 8 / bandwidth, plus round trips x the
link's latency (given with --rtt-us, default 100 us for a LAN).

    tests/bench/rpc_bytes.py --corral target/release/corral --plugin-dir DIR \
        --gguf MODEL.gguf --threads 2

Standard library only.
"""

import argparse
import socket
import subprocess
import sys
import threading
import time


class Relay:
    """Listens on a loopback port and relays each connection to `target`, counting bytes
    each way and the bursts the client sends (a burst: bytes sent after an answer)."""

    def __init__(self, target):
        self.target = target
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.up = 0
        self.down = 0
        self.requests = 0
        self.lock = threading.Lock()
        self.last_dir = None
        threading.Thread(target=self.accept, daemon=True).start()

    def counts(self):
        with self.lock:
            return self.up, self.down, self.requests

    def accept(self):
        while True:
            client, _ = self.sock.accept()
            host, port = self.target.rsplit(":", 1)
            server = socket.create_connection((host, int(port)))
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self.pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self.pump, args=(server, client, False), daemon=True).start()

    def pump(self, src, dst, up):
        while True:
            try:
                data = src.recv(1 << 20)
            except OSError:
                data = b""
            if not data:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return
            with self.lock:
                if up:
                    self.up += len(data)
                    if self.last_dir != "up":
                        self.requests += 1
                else:
                    self.down += len(data)
                self.last_dir = "up" if up else "down"
            dst.sendall(data)


def start_worker(args, port):
    cmd = [args.corral, "--plugin-dir", args.plugin_dir, "worker", "--listen",
           f"127.0.0.1:{port}", "--threads", str(args.threads)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = p.stdout.readline()
    if "listening on" not in line:
        sys.exit(f"corral worker did not start: {line}")
    threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
    return p


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def bench(args, relays, pp, tg):
    before = [r.counts() for r in relays]
    eps = ",".join(f"127.0.0.1:{r.port}" for r in relays)
    cmd = [args.corral, "--plugin-dir", args.plugin_dir, "bench", args.gguf, "--no-raw",
           "--reps", "1", "--pp", str(pp), "--tg", str(tg), "--threads", str(args.threads),
           "--rpc", eps]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"corral bench failed: {out.stderr}")
    time.sleep(0.2)
    after = [r.counts() for r in relays]
    return [tuple(a - b for a, b in zip(x, y)) for x, y in zip(after, before)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corral", required=True)
    ap.add_argument("--plugin-dir", required=True)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--rtt-us", type=float, default=100.0)
    args = ap.parse_args()

    workers = []
    relays = []
    for _ in range(2):
        port = free_port()
        workers.append(start_worker(args, port))
        relays.append(Relay(f"127.0.0.1:{port}"))
    try:
        base = bench(args, relays, 0, 0)
        gen = bench(args, relays, 0, args.tg)
        prompt = bench(args, relays, args.pp, 0)
    finally:
        for w in workers:
            w.kill()

    print(f"model: {args.gguf}  two workers on loopback through counting relays")
    print("| worker | load + warm-up (up/down) | per generated token (up/down, requests) "
          "| per prompt token (up/down) |")
    print("|---|---|---|---|")
    tot_up = tot_down = tot_req = 0.0
    for i, (b, g, p) in enumerate(zip(base, gen, prompt)):
        gu, gd, gr = ((g[k] - b[k]) / args.tg for k in range(3))
        pu, pd = ((p[k] - b[k]) / args.pp for k in range(2))
        tot_up += gu
        tot_down += gd
        tot_req += gr
        print(f"| {i} | {b[0] / 1e6:.1f} MB / {b[1] / 1e6:.3f} MB | {gu:.0f} B / {gd:.0f} B, "
              f"{gr:.1f} | {pu:.0f} B / {pd:.0f} B |")
    per_token = tot_up + tot_down
    print(f"\nper generated token, both workers: {per_token:.0f} bytes, "
          f"{tot_req:.1f} request/answer round trips")
    for name, bps in (("1 Gbit/s", 1e9), ("10 Gbit/s", 1e10)):
        wire_ms = per_token * 8 / bps * 1e3
        rtt_ms = tot_req * args.rtt_us / 1e3
        print(f"{name}: {wire_ms:.3f} ms of transfer + {rtt_ms:.2f} ms of round trips "
              f"({args.rtt_us:.0f} us each) = {wire_ms + rtt_ms:.2f} ms per token")


if __name__ == "__main__":
    main()
