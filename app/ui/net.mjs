// The engine's requests, run off the Python thread (app/ui/net-worker.mjs) and reported in batches.
//
// Measured in the engine's worker on a 174-slice CT: each request cost ~1.4 ms of the Python
// thread (fetch() itself ~0.8 ms under Chromium, an AbortController, a promise per await) and
// each body batch another promise; starting 23 requests kept the first picture's bytes waiting
// 67 ms. Here the requests run in their own worker: Python sends a list of operations as one
// JSON text and gets back what happened as one message per JS task (a JSON list of events and the
// body bytes, transferred).
//
// Operations in (one JSON array per message):
//   ["config", batchBytes, minBatchBytes, batchMs, wholeBytes, wholeMs]   body batch sizes
//   ["open", id, url, headers, priority]    fetch with the request's priority hint
//   ["whole", id]                           nothing acts on this body before its end: big batches
//   ["abort", id]                           cancel it; nothing more is said about it
//   ["preload", url]                        fetched now, handed to the first plain GET of the URL
// Events out ({meta: JSON text, bufs: [Uint8Array]}):
//   ["h", id, status, url, [[name, value]...], hasBody]   the answer's head
//   ["d", id, k]        the next bytes of the body: bufs[k]
//   ["e", id]           the end of the body
//   ["x", id, message]  the request or its body failed (fetch gives no finer reason)
//
// A body's batches: the first piece at once (the main header and TLM the engine plans with are
// in it), then what the stream already holds plus what arrives within batchMs, up to a size that
// grows with the body (minBatchBytes.. batchBytes); a body read whole: wholeBytes / wholeMs.

const TIMEOUT = Symbol("timeout");

class Body {
  constructor(reader) {
    this.reader = reader;
    this.pending = null;  // a read() still running when the last batch was handed over
  }

  next() {
    if (this.pending === null) this.pending = this.reader.read();
    return this.pending;
  }

  // everything the stream holds, then more until `want` bytes or `waitMs` after the first piece;
  // undefined at the end of the body
  async batch(want, waitMs) {
    const first = await this.next();
    this.pending = null;
    if (first.done) return undefined;
    const parts = [first.value];
    let size = first.value.byteLength;
    const deadline = performance.now() + waitMs;
    while (size < want) {
      const left = deadline - performance.now();
      let handle = null;
      const timer = left > 0 ? new Promise((r) => { handle = setTimeout(r, left, TIMEOUT); })
        : Promise.resolve(TIMEOUT);
      const got = await Promise.race([this.next(), timer]);
      if (handle !== null) clearTimeout(handle);
      if (got === TIMEOUT) break;
      this.pending = null;
      if (got.done) {
        this.pending = Promise.resolve(got);  // the next batch says the body ended
        break;
      }
      parts.push(got.value);
      size += got.value.byteLength;
    }
    if (parts.length === 1) return parts[0];
    const out = new Uint8Array(size);
    let at = 0;
    for (const part of parts) {
      out.set(part, at);
      at += part.byteLength;
    }
    return out;
  }
}

function describe(error) {
  return error && error.name ? `${error.name}: ${error.message}` : String(error);
}

function hasRange(headers) {
  return Object.keys(headers || {}).some((k) => k.toLowerCase() === "range");
}

export class Net {
  // emit({meta, bufs}, transfer): posts one message of events
  constructor(emit, fetchImpl = globalThis.fetch.bind(globalThis)) {
    this.emit = emit;
    this.fetch = fetchImpl;
    this.live = new Map();  // id -> {controller, whole}
    this.preloaded = new Map();  // url -> the answer's promise, taken once
    this.policy = [64 * 1024, 8 * 1024, 16, 8 * 1024 * 1024, 500];
    this.meta = [];
    this.bufs = [];
    this.flushing = false;
  }

  // one message from Python: a JSON array of operations
  handle(text) {
    for (const op of JSON.parse(text)) {
      const [kind, id] = op;
      if (kind === "open") this.open(id, op[2], op[3], op[4]);
      else if (kind === "abort") this.abort(id);
      else if (kind === "whole" && this.live.has(id)) this.live.get(id).whole = true;
      else if (kind === "config") this.policy = op.slice(1);
      else if (kind === "preload") this.preload(op[1]);
    }
  }

  preload(url) {
    const answer = this.fetch(url, { mode: "cors" });
    answer.catch(() => {});  // a failed preload is the engine's to report when it asks itself
    this.preloaded.set(url, answer);
  }

  abort(id) {
    const request = this.live.get(id);
    if (request === undefined) return;
    this.live.delete(id);
    request.controller.abort();
  }

  push(event, buf) {
    if (buf !== undefined) {
      // transferred whole: a view into a larger buffer is copied out first
      const own = buf.byteOffset === 0 && buf.byteLength === buf.buffer.byteLength ? buf : buf.slice();
      event.push(this.bufs.push(own) - 1);
    }
    this.meta.push(event);
    if (!this.flushing) {
      this.flushing = true;
      setTimeout(() => this.flush(), 0);
    }
  }

  flush() {
    this.flushing = false;
    const meta = this.meta;
    const bufs = this.bufs;
    this.meta = [];
    this.bufs = [];
    if (meta.length) this.emit({ meta: JSON.stringify(meta), bufs }, bufs.map((b) => b.buffer));
  }

  async open(id, url, headers, priority) {
    const controller = new AbortController();
    const request = { controller, whole: false };
    this.live.set(id, request);
    let response;
    try {
      const preloaded = hasRange(headers) ? undefined : this.preloaded.get(url);
      if (preloaded !== undefined) {
        this.preloaded.delete(url);  // handed over once
        response = await preloaded;
      } else {
        const init = { method: "GET", headers, signal: controller.signal, redirect: "follow" };
        if (priority) init.priority = priority;
        response = await this.fetch(url, init);
      }
    } catch (error) {
      if (this.live.get(id) === request) {
        this.live.delete(id);
        this.push(["x", id, describe(error)]);
      }
      return;
    }
    if (this.live.get(id) !== request) {  // aborted while its head was on its way
      if (response.body) response.body.cancel().catch(() => {});
      return;
    }
    this.push(["h", id, response.status, response.url, Array.from(response.headers), !!response.body]);
    if (response.body) await this.pump(id, request, new Body(response.body.getReader()));
    else this.live.delete(id);
  }

  async pump(id, request, body) {
    const [batchBytes, minBatch, batchMs, wholeBytes, wholeMs] = this.policy;
    let total = 0;
    let first = true;
    try {
      for (;;) {
        // small batches while the body is young (its first resolution levels are small and the
        // first picture waits on them), larger once it has grown
        const want = request.whole ? wholeBytes : first ? 1 : Math.min(batchBytes, Math.max(minBatch, total >> 2));
        const batch = await body.batch(want, request.whole ? wholeMs : batchMs);
        if (this.live.get(id) !== request) {
          body.reader.cancel().catch(() => {});
          return;
        }
        if (batch === undefined) {
          this.live.delete(id);
          this.push(["e", id]);
          return;
        }
        first = false;
        total += batch.byteLength;
        this.push(["d", id], batch);
      }
    } catch (error) {
      if (this.live.get(id) === request) {
        this.live.delete(id);
        this.push(["x", id, describe(error)]);
      }
    }
  }
}
