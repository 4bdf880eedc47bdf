// The engine's network calls in the worker (app/transport/browser.py): one JS call per request and
// one per *batch* of body pieces. The browser hands a body over in ~1.5 KB pieces; crossing into
// Python for each one (a promise, an asyncio task step, a deadline timer) cost more than the bytes
// while several frames stream at once, and the pipe went idle while Python caught up.
//
// open():   fetch with the request's priority hint (the browser gives its few connections per host
//           to the highest priority request waiting: the image on screen goes first); the answer's
//           headers as one JSON text.
// Body.batch(want, waitMs): everything the stream already holds, then more until `want` bytes or
//           `waitMs` after the first piece; one Uint8Array, or undefined at the end of the body
//           (undefined, not null: Pyodide hands null over as JsNull, undefined as None).

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

  async batch(want, waitMs) {
    const first = await this.next();
    this.pending = null;
    if (first.done) return undefined;
    const parts = [first.value];
    let size = first.value.byteLength;
    const deadline = performance.now() + waitMs;
    while (size < want) {
      const left = deadline - performance.now();
      // a piece already queued wins the race at once; otherwise wait at most what is left
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

  cancel() {
    this.reader.cancel().catch(() => {});
  }
}

export async function open(url, headersJson, priority, signal) {
  const init = { method: "GET", headers: JSON.parse(headersJson), signal, redirect: "follow" };
  if (priority) init.priority = priority;
  const response = await fetch(url, init);
  return {
    status: response.status,
    url: response.url,
    headers: JSON.stringify(Array.from(response.headers)),
    body: response.body ? new Body(response.body.getReader()) : undefined,
  };
}
