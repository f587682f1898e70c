#!/usr/bin/env python3
"""s3-fault-proxy: an HTTP/1.1 proxy in front of an S3 endpoint that injects
faults, for nightjar's tests (tests/integration/test-s3-faults.sh).

    s3-fault-proxy.py --listen PORT --upstream http://127.0.0.1:7480
                      [--fail-every N] [--cut-before-every N]
                      [--cut-after-every N] [--cut-body-every N]
                      [--ignore-conditions] [--log FILE]

Every request is counted; the Nth, 2Nth, ... request of a rule gets its
fault instead of (or after) being forwarded:
  --fail-every N        answered 503 SlowDown, never forwarded
  --cut-before-every N  connection closed before forwarding (request lost)
  --cut-after-every N   forwarded, then the connection closed without an
                        answer (the request took effect; the client cannot
                        know)
  --cut-body-every N    connection closed after half of the request body
                        was read (an upload cut mid-way), never forwarded
  --ignore-conditions   a 412 (If-None-Match / If-Match failed) is answered
                        200, as by a server that ignores preconditions
Requests are forwarded byte for byte (headers in order, so SigV4 holds).
--listen 0 takes a free port; the port is printed on stdout when ready.
The log gets one line per request: its number, method, path, and the fault.
Only Python's standard library is used.
"""
import argparse
import http.client
import socketserver
import sys
import threading
import urllib.parse

counter = 0
counter_lock = threading.Lock()
log_lock = threading.Lock()
args = None


def log(line):
    if args.log:
        with log_lock, open(args.log, "a") as f:
            f.write(line + "\n")


def every(n, k):
    return n > 0 and k % n == 0


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        up = urllib.parse.urlsplit(args.upstream)
        conn = http.client.HTTPConnection(up.hostname, up.port or 80,
                                          timeout=120)
        while self.one_request(conn):
            pass
        conn.close()

    def one_request(self, conn):
        global counter
        line = self.rfile.readline(65537)
        if not line:
            return False
        method, target, _ = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        headers = []
        length = 0
        expect = False
        while True:
            h = self.rfile.readline(65537)
            if h in (b"\r\n", b"\n", b""):
                break
            name, value = h.decode("latin-1").rstrip("\r\n").split(":", 1)
            value = value.strip()
            headers.append((name, value))
            if name.lower() == "content-length":
                length = int(value)
            if name.lower() == "expect" and value.lower() == "100-continue":
                expect = True
        with counter_lock:
            counter += 1
            k = counter
        if every(args.fail_every, k):
            log(f"{k} {method} {target} 503")
            body = b"<?xml version=\"1.0\"?><Error><Code>SlowDown</Code></Error>"
            if expect and length:
                # Refuse the body: the client must not send it.
                self.wfile.write(b"HTTP/1.1 503 Service Unavailable\r\n"
                                 b"Connection: close\r\nContent-Length: "
                                 + str(len(body)).encode() + b"\r\n\r\n" + body)
                return False
            self.rfile.read(length)
            self.wfile.write(b"HTTP/1.1 503 Service Unavailable\r\n"
                             b"Content-Type: application/xml\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
            return True
        if every(args.cut_before_every, k):
            log(f"{k} {method} {target} cut-before")
            return False
        if expect and length:
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.wfile.flush()
        if length and every(args.cut_body_every, k):
            self.rfile.read(length // 2)
            log(f"{k} {method} {target} cut-body")
            return False
        body = self.rfile.read(length) if length else b""
        conn.putrequest(method, target, skip_host=True,
                        skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders(body if body else None)
        resp = conn.getresponse()
        data = resp.read()
        status, reason = resp.status, resp.reason
        conditional = any(n.lower() in ("if-none-match", "if-match")
                          for n, _ in headers)
        if args.ignore_conditions and conditional and status == 412:
            # What a server that ignores preconditions would answer.
            log(f"{k} {method} {target} 412-as-200")
            status, reason, data = 200, "OK", b""
        if every(args.cut_after_every, k):
            log(f"{k} {method} {target} cut-after {status}")
            return False
        log(f"{k} {method} {target} {status}")
        out = [f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1")]
        for name, value in resp.getheaders():
            if name.lower() in ("transfer-encoding", "content-length",
                                "connection"):
                continue
            out.append(f"{name}: {value}\r\n".encode("latin-1"))
        out.append(f"Content-Length: {len(data)}\r\n\r\n".encode())
        self.wfile.write(b"".join(out) + data)
        self.wfile.flush()
        return True


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main():
    global args
    p = argparse.ArgumentParser()
    p.add_argument("--listen", type=int, required=True)
    p.add_argument("--upstream", required=True)
    for rule in ("fail-every", "cut-before-every", "cut-after-every",
                 "cut-body-every"):
        p.add_argument("--" + rule, type=int, default=0)
    p.add_argument("--ignore-conditions", action="store_true",
                   help="answer 200 where upstream failed a precondition")
    p.add_argument("--log")
    args = p.parse_args()
    srv = Server(("127.0.0.1", args.listen), Handler)
    print(srv.server_address[1], flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
