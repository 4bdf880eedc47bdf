"""serve.py under abuse: traversal tricks, oversized requests, many clients, slow clients.

It keeps serving everyone else and never exposes a file outside its roots. (tests/test_serve.py
covers the plain traversal cases; these are the ones it does not.)
"""

from __future__ import annotations

import gzip
import http.client
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

SECRET = b"top secret outside the root"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("abuse")
    root = base / "data"
    frames = root / "studies" / "1" / "series" / "2" / "instances" / "3" / "frames"
    frames.mkdir(parents=True)
    files = {}
    for n in range(1, 6):
        files[n] = os.urandom(5_000 * n)
        (frames / str(n)).write_bytes(files[n])
    (root / "big.bin").write_bytes(os.urandom(4 << 20))
    (base / "secret.txt").write_bytes(SECRET)
    (base / "outside").mkdir()
    (base / "outside" / "1").write_bytes(SECRET)
    # links out of the root: relative, chained, a directory, a link to a link inside the root
    (root / "rel").symlink_to("../secret.txt")
    (root / "hop1").symlink_to(root / "hop2")
    (root / "hop2").symlink_to(base / "secret.txt")
    (root / "studies" / "1" / "series" / "2" / "instances" / "4").symlink_to(base / "outside")
    (frames / "9").symlink_to(frames / "1")  # inside the root: fine to follow
    (root / "loop").symlink_to(root / "loop")
    return {"root": root, "files": files, "base": base}


@pytest.fixture(scope="module")
def live(tree, serve_dir):
    return serve_dir(tree["root"])


def address(live):
    return live.server.server_address[:2]


def raw(live, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read the answer until the server closes or goes quiet."""
    with socket.create_connection(address(live), timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)  # nothing more is coming: the server need not wait for it
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
                if b"\r\n\r\n" in out and len(out) > 4096:
                    break
        except socket.timeout:
            pass
    return out


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


def get(live, path, headers=None, timeout=10.0):
    conn = http.client.HTTPConnection(*address(live), timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


FRAME = "/dicomweb/studies/1/series/2/instances/3/frames/{}"


def assert_still_serving(live, tree):
    status, body = get(live, FRAME.format(2), timeout=3)
    assert status == 200 and body == tree["files"][2]


# -- traversal --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [
    "/dicomweb/rel",
    "/dicomweb/hop1",
    "/dicomweb/loop",
    "/dicomweb/studies/1/series/2/instances/4/1",  # a directory link out of the root
    "/dicomweb/studies/1/series/2/instances/4",
    "/dicomweb/%2e%2e%2fsecret.txt",
    "/dicomweb/studies/%2F..%2F..%2F..%2F..%2Fsecret.txt",
    "/dicomweb/studies/1/../../../secret.txt",
    "/dicomweb/./../secret.txt",
    "/dicomweb/..;/secret.txt",
    "/dicomweb/%c0%ae%c0%ae/secret.txt",  # overlong UTF-8 dots
    "/dicomweb/%25252e%25252e/secret.txt",  # triple-encoded
    "/dicomweb/..%255csecret.txt",
    "/dicomweb/..\\secret.txt",
    "/dicomweb/C:/secret.txt",
    "/dicomweb/%00/../secret.txt",
    "/dicomweb/studies%00.json",
    "//dicomweb/../secret.txt",
    "/static/../../secret.txt",
    "/app/%2e%2e/%2e%2e/secret.txt",
    "/index.html/../secret.txt",
    "/dicomweb/studies/1/series/2/instances/3/frames/1/../../../../../../../secret.txt",
])
def test_traversal_variants_never_leave_the_root(live, path):
    status, body = get(live, path)
    assert status in (400, 404), (path, status)
    assert SECRET not in body


@pytest.mark.parametrize("target", [
    b"/dicomweb/../secret.txt",
    b"http://127.0.0.1/dicomweb/../secret.txt",  # absolute-form request target
    b"../secret.txt",
    b"*",
    b"/dicomweb/\xff\xfe",
])
def test_raw_request_targets_never_leave_the_root(live, target):
    answer = raw(live, b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert status_of(answer) in (400, 404)
    assert SECRET not in answer


def test_links_inside_the_root_are_followed(live, tree):
    assert get(live, FRAME.format(9)) == (200, tree["files"][1])


# -- oversized and malformed requests ------------------------------------------------------------------------


def test_very_long_url_is_414_and_the_server_keeps_serving(live, tree):
    answer = raw(live, b"GET /dicomweb/" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert status_of(answer) == 414
    status, _ = get(live, "/dicomweb/" + "a/" * 4000)  # long but under the limit: just not found
    assert status == 404
    assert_still_serving(live, tree)


def test_very_long_header_line_is_431(live, tree):
    answer = raw(live, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"b" * 70_000 + b"\r\n\r\n")
    assert status_of(answer) == 431
    assert_still_serving(live, tree)


def test_too_many_headers_is_431(live, tree):
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    answer = raw(live, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n")
    assert status_of(answer) == 431
    assert_still_serving(live, tree)


@pytest.mark.parametrize("request_bytes, statuses", [
    (b"GARBAGE\r\n\r\n", (400,)),
    (b"GET\r\n\r\n", (400,)),
    (b"GET / HTTP/9.9\r\n\r\n", (505,)),
    (b"GET / HTTP/1.1 extra\r\n\r\n", (400,)),
    (b"POST /dicomweb/big.bin HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", (501,)),
    (b"DELETE /dicomweb/big.bin HTTP/1.1\r\n\r\n", (501,)),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(7, 71)), (400, 0)),  # a TLS hello
])
def test_malformed_requests_get_an_error_and_the_server_keeps_serving(live, tree, request_bytes, statuses):
    assert status_of(raw(live, request_bytes, timeout=3)) in statuses
    assert_still_serving(live, tree)


@pytest.mark.parametrize("spec", ["bytes=99999999999999999999999-", "bytes=-99999999999999999999999",
                                  "bytes=5-1", "bytes=--1", "bytes=0-0," * 2000 + "0-0", "items=0-10"])
def test_hostile_ranges(live, tree, spec):
    status, body = get(live, FRAME.format(1), {"Range": spec})
    size = len(tree["files"][1])
    assert status in (200, 206, 416)
    if status == 200:
        assert body == tree["files"][1]
    if status == 206:
        assert len(body) <= size and body == tree["files"][1][-len(body):]


# -- load -----------------------------------------------------------------------------------------------------


def test_many_concurrent_clients_all_get_the_right_bytes(live, tree):
    files = tree["files"]

    def client(k: int) -> int:
        conn = http.client.HTTPConnection(*address(live), timeout=10)
        ok = 0
        try:
            for i in range(20):
                n = 1 + (k + i) % 5
                if i % 3 == 0:
                    conn.request("GET", FRAME.format(n), headers={"Range": "bytes=100-4099"})
                    resp = conn.getresponse()
                    ok += resp.status == 206 and resp.read() == files[n][100:4100]
                else:
                    conn.request("GET", FRAME.format(n))
                    resp = conn.getresponse()
                    ok += resp.status == 200 and resp.read() == files[n]
        finally:
            conn.close()
        return ok

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(client, range(50)))
    assert results == [20] * 50


# -- slow clients ----------------------------------------------------------------------------------------------


def test_clients_holding_half_requests_do_not_block_others(live, tree):
    holders = []
    try:
        for i in range(80):
            s = socket.create_connection(address(live), timeout=5)
            s.sendall(b"GET /dicomweb/big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"z" * i)  # never finished
            holders.append(s)
        for n in range(1, 6):  # a blocked server would time these out
            assert get(live, FRAME.format(n), timeout=3) == (200, tree["files"][n])
    finally:
        for s in holders:
            s.close()
    assert_still_serving(live, tree)


def test_a_client_that_never_reads_does_not_block_others(live, tree):
    stuck = []
    try:
        for _ in range(5):
            s = socket.create_connection(address(live), timeout=5)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"GET /dicomweb/big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # 4 MB it never reads
            stuck.append(s)
        time.sleep(0.2)
        assert_still_serving(live, tree)  # its requests time out if the stuck clients block it
    finally:
        for s in stuck:
            s.close()


def test_a_client_that_hangs_up_mid_body_does_not_hurt_the_server(live, tree):
    for _ in range(10):
        s = socket.create_connection(address(live), timeout=5)
        s.sendall(b"GET /dicomweb/big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        s.recv(1000)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
        s.close()
    assert_still_serving(live, tree)
    alive = [t for t in threading.enumerate() if t.name.startswith("Thread")]
    assert len(alive) < 500


# -- issue 14 item 10 -----------------------------------------------------------------------------------------


def test_a_4300_digit_range_number_is_416_not_a_traceback(live, tree, capfd):
    huge = "9" * 4300
    status, _ = get(live, FRAME.format(1), {"Range": f"bytes={huge}-"})
    assert status == 416
    size = len(tree["files"][1])
    assert get(live, FRAME.format(1), {"Range": f"bytes=0-{huge}"}) == (206, tree["files"][1])
    assert get(live, FRAME.format(1), {"Range": f"bytes=-{huge}"}) == (206, tree["files"][1])
    assert get(live, FRAME.format(1), {"Range": f"bytes={'0' * 5000}{size - 1}-"})[0] == 206
    assert "Traceback" not in capfd.readouterr().err
    assert_still_serving(live, tree)


def test_a_get_with_a_body_is_not_read_as_a_second_request(live, tree):
    smuggled = b"GET /dicomweb/big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    request = (b"GET " + FRAME.format(1).encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Content-Length: " + str(len(smuggled)).encode() + b"\r\n\r\n" + smuggled)
    with socket.create_connection(address(live), timeout=5) as s:
        s.sendall(request + b"GET " + FRAME.format(2).encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Connection: close\r\n\r\n")
        answer = b""
        while chunk := s.recv(1 << 16):
            answer += chunk
    assert answer.count(b"HTTP/1.1 200") == 2  # frame 1 and frame 2, never big.bin
    assert tree["files"][1] in answer and tree["files"][2] in answer
    assert len(answer) < len(tree["files"][1]) + len(tree["files"][2]) + 4096
    status = status_of(raw(live, b"GET " + FRAME.format(1).encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                 b"Content-Length: 999999999\r\n\r\n"))
    assert status == 413
    assert_still_serving(live, tree)


def test_connection_threads_are_bounded(tree, serve_dir):
    live = serve_dir(tree["root"], max_connections=4)
    idle = [socket.create_connection(address(live), timeout=5) for _ in range(4)]
    try:
        time.sleep(0.2)
        before = threading.active_count()
        refused = []
        for _ in range(20):  # the fifth and later connections are answered at once, without a thread
            with socket.create_connection(address(live), timeout=3) as s:
                refused.append(s.recv(4096))
        assert all(status_of(answer) == 503 for answer in refused), refused
        assert threading.active_count() <= before + 1
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and get(live, FRAME.format(1), timeout=2)[0] != 200:
        time.sleep(0.05)
    assert_still_serving(live, tree)


def test_gzip_of_a_large_file_is_streamed_not_held(tree, serve_dir, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    text = b'[{"00100010": {"vr": "PN", "Value": [{"Alphabetic": "DOE^JANE"}]}}]\n' * 400_000  # ~27 MB
    (root / "big.json").write_bytes(text)
    live = serve_dir(root)
    conn = http.client.HTTPConnection(*address(live), timeout=30)
    try:
        conn.request("GET", "/dicomweb/big.json", headers={"Accept-Encoding": "gzip"})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 200 and resp.getheader("Content-Encoding") == "gzip"
    assert resp.getheader("Content-Length") is None and resp.getheader("Transfer-Encoding") == "chunked"
    assert gzip.decompress(body) == text
    assert live.server.gzip_cache._size == 0  # nothing of it kept in memory
