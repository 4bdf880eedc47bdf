"""app/ui/net.mjs under Node: the worker's body batches (what BrowserTransport reads per await).

A body's pieces are handed over in batches: the first piece alone when asked for one byte, then
everything already queued plus what arrives within the wait, up to ``want`` bytes; the end of the
body comes as ``undefined`` (Pyodide's None), after the last bytes, never mixed with them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent

SCRIPT = r"""
const net = await import(process.argv[1]);
// a fetch that answers from a ReadableStream the script feeds: pieces[i] = [delay ms, size]
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
globalThis.fetch = async (url, init) => ({
  status: 206, url, headers: new Headers({ "Content-Range": "bytes 0-9/10", "X-Priority": init.priority || "" }),
  body: body(JSON.parse(url.slice(6))),
});
const out = [];
for (const [pieces, wants] of JSON.parse(process.argv[2])) {
  const answer = await net.open("mem://" + JSON.stringify(pieces), "{}", "high", undefined);
  const got = [];
  for (const [want, wait] of wants) {
    const batch = await answer.body.batch(want, wait);
    got.push(batch === undefined ? null : [batch.byteLength, Array.from(new Set(batch))]);
  }
  out.push({ status: answer.status, headers: JSON.parse(answer.headers), got });
}
console.log(JSON.stringify(out));
"""


def run_batches(cases):
    if not shutil.which("node"):
        pytest.skip("node is not installed (tools/test.sh installs it)")
    proc = subprocess.run(["node", "--input-type=module", "-e", SCRIPT, str(PROJECT / "app/ui/net.mjs"),
                           json.dumps(cases)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_batches_join_pieces_up_to_want_and_end_with_undefined():
    pieces = [[0, 1500]] * 6 + [[0, 100]]
    [result] = run_batches([[pieces, [[1, 50], [4000, 50], [100000, 50], [1, 50]]]])
    assert result["status"] == 206
    assert ["content-range", "bytes 0-9/10"] in result["headers"]
    assert ["x-priority", "high"] in result["headers"]  # the priority hint reached fetch
    first, second, third, end = result["got"]
    assert first == [1500, [1]]  # one byte wanted: the first piece alone, at once
    assert second == [4500, [2, 3, 4]]  # pieces joined until 4000 bytes are held
    assert third == [3100, [5, 6, 7]]  # the rest of the body, in one batch
    assert end is None  # then the end, on its own


def test_a_batch_waits_at_most_its_time_for_more():
    pieces = [[0, 1000], [300, 1000], [0, 1000]]  # the second piece comes 300 ms later
    [result] = run_batches([[pieces, [[100000, 40], [100000, 40], [1, 40]]]])
    assert result["got"] == [[1000, [1]], [2000, [2, 3]], None]
