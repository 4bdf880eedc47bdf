"""app/ui/net.mjs under Node: the engine's requests as the network worker runs them.

Python sends operations (JSON text); the worker answers with events, one message per JS task: the
head, body batches (the first piece alone, then everything already queued plus what arrives within
the wait, up to a size that grows with the body), the end, or a failure. Aborted requests say
nothing more; a preloaded answer goes to the first plain GET of its URL only."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent

SCRIPT = r"""
const { Net } = await import(process.argv[1]);
const plan = JSON.parse(process.argv[2]);
// a fetch that answers from a ReadableStream the script feeds: the URL's JSON = [[delay ms, size]...]
const calls = [];
function body(pieces) {
  let i = 0;
  return new ReadableStream({
    async pull(controller) {
      if (i >= pieces.length) { controller.close(); return; }
      const [delay, size] = pieces[i++];
      if (delay) await new Promise((r) => setTimeout(r, delay));
      controller.enqueue(new Uint8Array(size).fill(i));
    },
  }, { highWaterMark: 0 });
}
const fakeFetch = async (url, init) => {
  calls.push([url, (init && init.headers) || {}, init && init.signal ? "signal" : "none"]);
  if (url.includes("fail")) throw new TypeError("Failed to fetch");
  const pieces = JSON.parse(decodeURIComponent(url.split("#")[1] || "[]"));
  return { status: 206, url, headers: new Headers({ "Content-Range": "bytes 0-9/10",
           "X-Priority": (init && init.priority) || "" }), body: body(pieces) };
};
const messages = [];
const net = new Net((message, transfer) => {
  const bufs = message.bufs.map((b) => [b.byteLength, Array.from(new Set(b))]);
  messages.push({ meta: JSON.parse(message.meta), bufs, transfer: transfer.length });
}, fakeFetch);
for (const [delay, ops] of plan) {
  if (delay) await new Promise((r) => setTimeout(r, delay));
  net.handle(JSON.stringify(ops));
}
await new Promise((r) => setTimeout(r, 600));
console.log(JSON.stringify({ messages, calls }));
"""


def run_net(plan):
    if not shutil.which("node"):
        pytest.skip("node is not installed (tools/test.sh installs it)")
    proc = subprocess.run(["node", "--input-type=module", "-e", SCRIPT, str(PROJECT / "app/ui/net.mjs"),
                           json.dumps(plan)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def url(pieces, name="f"):
    return f"mem://{name}#" + json.dumps(pieces)


def events(result, rid):
    """(kind, detail) of one request's events, in order; a body batch as [size, piece numbers]."""
    out = []
    for message in result["messages"]:
        for event in message["meta"]:
            if event[1] != rid:
                continue
            if event[0] == "d":
                out.append(("d", message["bufs"][event[2]]))
            elif event[0] == "h":
                out.append(("h", event[2:]))
            else:
                out.append((event[0], event[2:]))
    return out


CONFIG = ["config", 4000, 4000, 50, 100000, 50]


def test_batches_grow_from_the_first_piece_and_the_end_comes_alone():
    pieces = [[0, 1500]] * 6 + [[0, 100]]
    result = run_net([[0, [CONFIG, ["open", 1, url(pieces), {"Range": "bytes=0-9"}, "high"]]]])
    (head, *rest) = events(result, 1)
    status, final_url, headers, has_body = head[1]
    assert status == 206 and has_body and final_url == url(pieces)
    assert ["content-range", "bytes 0-9/10"] in headers
    assert ["x-priority", "high"] in headers  # the priority hint reached fetch
    assert result["calls"][0][1] == {"Range": "bytes=0-9"}
    assert rest == [("d", [1500, [1]]),  # the first piece alone, at once
                    ("d", [4500, [2, 3, 4]]),  # then joined until 4000 bytes are held
                    ("d", [3100, [5, 6, 7]]),  # the rest of the body
                    ("e", [])]  # then the end, on its own
    assert all(m["transfer"] == len(m["bufs"]) for m in result["messages"])  # bytes moved, not copied


def test_a_batch_waits_at_most_its_time_for_more():
    pieces = [[0, 1000], [0, 1000], [300, 1000], [0, 1000]]  # the third piece comes 300 ms later
    result = run_net([[0, [CONFIG, ["open", 1, url(pieces), {}, None]]]])
    assert [e for e in events(result, 1) if e[0] != "h"] == [
        ("d", [1000, [1]]), ("d", [1000, [2]]), ("d", [2000, [3, 4]]), ("e", [])]


def test_a_body_read_whole_comes_in_big_batches():
    pieces = [[0, 1000]] + [[5, 1000]] * 5
    whole_window = [*CONFIG[:5], 5000]  # wide: a loaded machine's 5 ms timers may take 50 ms together
    result = run_net([[0, [whole_window, ["open", 1, url(pieces), {}, None], ["whole", 1]]]])
    batches = [e[1][0] for e in events(result, 1) if e[0] == "d"]
    assert batches == [6000]  # all of it in one batch (under 100000 bytes, ended within the window)


def test_an_aborted_request_says_nothing_more_and_its_fetch_is_cancelled():
    slow = [[0, 100]] + [[100, 100]] * 4
    result = run_net([[0, [CONFIG, ["open", 1, url(slow), {}, None], ["open", 2, url(slow, "g"), {}, None]]],
                      [150, [["abort", 1]]]])
    one, two = events(result, 1), events(result, 2)
    assert one[-1][0] == "d" and len(one) < len(two)  # nothing after the abort
    assert two[-1] == ("e", []) and sum(e[1][0] for e in two if e[0] == "d") == 500
    assert result["calls"][0][2] == "signal"


def test_a_failed_fetch_is_one_event_naming_why():
    result = run_net([[0, [CONFIG, ["open", 7, "mem://fail", {}, None]]]])
    assert events(result, 7) == [("x", ["TypeError: Failed to fetch"])]


def test_a_preload_answers_the_first_plain_get_of_its_url_only():
    target = url([[0, 10]], "meta")
    result = run_net([[0, [CONFIG, ["preload", target]]],
                      [20, [["open", 1, target, {}, None], ["open", 2, target, {"Range": "bytes=0-1"}, None],
                            ["open", 3, target, {}, None]]]])
    asked = [c[0] for c in result["calls"]]
    assert asked.count(target) == 3  # the preload, the ranged GET, the second plain GET: not four
    assert all(events(result, rid)[-1] == ("e", []) for rid in (1, 2, 3))


def test_events_of_one_task_travel_in_one_message():
    result = run_net([[0, [CONFIG] + [["open", rid, url([[0, 10]], f"n{rid}"), {}, None] for rid in range(1, 9)]]])
    count = sum(len(m["meta"]) for m in result["messages"])
    assert count == 8 * 3  # head, bytes, end for each
    assert len(result["messages"]) < count / 2
