// The engine's network thread (started by app/ui/boot.mjs): runs app/ui/net.mjs so fetch() and the
// body streams cost the engine's Python thread nothing but one message per batch of events. The
// page sends preloads; the engine's worker talks to it over the port the page hands to both.
import { Net } from "./net.mjs";

let port = null;
const net = new Net((message, transfer) => port.postMessage(message, transfer));
self.onmessage = (event) => {
  const data = event.data;
  if (data && data.port) {
    port = data.port;
    port.onmessage = (e) => net.handle(e.data);
    return;
  }
  net.handle(data);
};
