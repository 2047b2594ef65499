import { assertEquals, assertRejects } from "@deps/assert";
import { WsClient, WsHandshakeError } from "./_ws_client.ts";

/** An echo server that also reports the peer address it saw. */
function echoServer() {
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req, info) => {
    if (new URL(req.url).pathname === "/refuse") {
      return Response.json({ error: "no" }, { status: 403 });
    }
    // The peer address is only readable while the request is open: read it first.
    const peer = (info.remoteAddr as Deno.NetAddr).hostname;
    const { socket, response } = Deno.upgradeWebSocket(req);
    socket.binaryType = "arraybuffer";
    socket.onopen = () => socket.send(`peer ${peer}`);
    socket.onmessage = (e) => {
      if (e.data === "close") socket.close(1000, "bye");
      else socket.send(e.data);
    };
    return response;
  });
  return { server, url: `ws://127.0.0.1:${server.addr.port}` };
}

async function next(reader: ReadableStreamDefaultReader<Uint8Array | string>) {
  const { value } = await reader.read();
  return value;
}

Deno.test("WsClient binds the local address, echoes text and binary of every size, and closes", async () => {
  const { server, url } = echoServer();
  try {
    const ws = await WsClient.connect(`${url}/echo`, { localAddress: "127.0.0.7" });
    const reader = ws.messages.getReader();
    assertEquals(await next(reader), "peer 127.0.0.7");
    await ws.send("hello ü");
    assertEquals(await next(reader), "hello ü");
    for (const size of [0, 1, 125, 126, 65535, 65536, 3 * 1024 * 1024 + 3]) {
      const data = crypto.getRandomValues(new Uint8Array(Math.min(size, 65536)));
      const payload = new Uint8Array(size);
      for (let i = 0; i < size; i += data.length) {
        payload.set(data.subarray(0, Math.min(data.length, size - i)), i);
      }
      await ws.send(payload);
      const echoed = await next(reader);
      assertEquals((echoed as Uint8Array).length, size);
      assertEquals(echoed, payload);
    }
    await ws.send("close");
    assertEquals((await reader.read()).done, true);
  } finally {
    await server.shutdown();
  }
});

Deno.test("WsClient reports a refused upgrade with its status and body, and a closed port", async () => {
  const { server, url } = echoServer();
  try {
    const error = await assertRejects(() => WsClient.connect(`${url}/refuse`), WsHandshakeError);
    assertEquals(error.status, 403);
    assertEquals(JSON.parse(error.body), { error: "no" });
  } finally {
    await server.shutdown();
  }
  const closed = await assertRejects(
    () => WsClient.connect(url),
    WsHandshakeError,
    "cannot connect",
  );
  assertEquals(closed.status, 0);
});
