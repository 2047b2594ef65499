// The remote shell rsync uses to reach an ops-agent (`rsync --rsh`): instead
// of ssh, it opens the agent's /v1/sync WebSocket and carries rsync's stdin
// and stdout over it. rsync runs it as
//
//   <deno> run ... sync_tunnel.ts --url=http://AGENT:7070 [--local-address=IP] [--mkpath]
//       [--stdio=swapped] HOST rsync --server ...
//
// `--mkpath` adds rsync's `--mkpath` to the vector (before its `. PATH`),
// for a local rsync that cannot send it (openrsync) to an agent rsync that
// knows it. `--stdio=swapped`: rsync's connection is this program's stderr
// and rsync's stderr its stdout (see writeData).
//
// The agent identifies the caller by the connection's source address (whois),
// validates the `rsync --server` argument vector and checks the capability
// before it upgrades; a refusal arrives as an HTTP status, which this program
// reports on stderr as one `ops-exec-sync-refused: {...}` line (read by
// AgentRpc) and exits 255.
//
// Messages after the upgrade: binary = rsync's bytes, both ways. Text from
// the agent: {"stderr": "..."} (the server rsync's stderr) and, last,
// {"exit": N} (its exit status, which becomes this program's), and
// {"ack": N} (bytes of ours rsync has taken: at most 8 MiB may be in flight
// beyond it). Text from here: {"eof": true} once rsync closes our stdin.

import { parseArgs } from "node:util";
import {
  REFUSED_PREFIX,
  SYNC_MESSAGE_BYTES,
  SYNC_WINDOW_BYTES,
  type SyncRefusal,
} from "./_agent_protocol.ts";
import { WsClient, WsHandshakeError } from "./_ws_client.ts";

async function main(args: string[]): Promise<number> {
  // Our own options come first, in --name=value form; then rsync's host name.
  const split = args.findIndex((arg) => !arg.startsWith("--"));
  const { values } = parseArgs({
    args: args.slice(0, split < 0 ? args.length : split),
    options: {
      url: { type: "string" },
      "local-address": { type: "string" },
      mkpath: { type: "boolean" },
      stdio: { type: "string" },
    },
  });
  const swapped = values.stdio === "swapped";
  const data = swapped ? Deno.stderr : Deno.stdout;
  const diagnostics = swapped ? Deno.stdout : Deno.stderr;
  const remote = args.slice(split + 1); // after the host name rsync passes
  if (!values.url || split < 0 || remote[0] !== "rsync") {
    await writeAll(
      diagnostics,
      new TextEncoder().encode(
        "sync_tunnel: usage: --url=URL [--local-address=IP] [--mkpath] [--stdio=swapped] " +
          "HOST rsync --server ...\n",
      ),
    );
    return 2;
  }
  if (values.mkpath && remote.at(-2) === ".") remote.splice(remote.length - 2, 0, "--mkpath");
  const url = new URL("/v1/sync", values.url);
  url.searchParams.set("argv", JSON.stringify(remote));

  let ws: WsClient;
  try {
    ws = await WsClient.connect(url.href, { localAddress: values["local-address"] });
  } catch (error) {
    const refusal: SyncRefusal = error instanceof WsHandshakeError
      ? { status: error.status, body: parseJson(error.body), message: error.message }
      : { status: 0, body: null, message: String(error) };
    await writeAll(
      diagnostics,
      new TextEncoder().encode(`${REFUSED_PREFIX}${JSON.stringify(refusal)}\n`),
    );
    return 255;
  }

  const flow = new Window();
  const upstream = pumpStdin(ws, flow);
  let exit = 255;
  const encoder = new TextEncoder();
  for await (const message of ws.messages) {
    if (typeof message !== "string") {
      await (swapped ? writeData(data, message) : writeAll(data, message));
      continue;
    }
    const event = parseJson(message) as { stderr?: string; exit?: number; ack?: number } | null;
    if (event?.ack !== undefined) flow.acknowledge(event.ack);
    if (event?.stderr !== undefined) {
      await writeAll(diagnostics, encoder.encode(`${event.stderr}\n`));
    }
    if (event?.exit !== undefined) exit = event.exit;
  }
  // The agent's side has ended. rsync keeps our stdin open until we exit, so
  // the upstream pump is not waited for.
  flow.close();
  upstream.catch(() => {});
  return exit;
}

// rsync hands its remote shell a non-blocking socket unless it runs with
// --blocking-io (AgentRpc passes it to rsync 3.x). Deno's stdout is
// line-buffered: a write to a non-blocking descriptor can take part of a
// buffer and still fail with WouldBlock, which no retry can repair (the
// bytes taken are not reported): fail clearly.
//
// openrsync has no --blocking-io: its remote shell always gets a
// non-blocking socket. Deno's stderr is unbuffered (one write(2) per call:
// WouldBlock means nothing was written), so under openrsync AgentRpc runs
// this program through a script that swaps the two (--stdio=swapped):
// rsync's bytes go out on stderr, with a retry when the socket is full.

/** Writes all of `bytes` to an unbuffered, possibly non-blocking descriptor (our stderr). */
async function writeData(out: { write(p: Uint8Array): Promise<number> }, bytes: Uint8Array) {
  let offset = 0;
  let wait = 0;
  while (offset < bytes.length) {
    try {
      offset += await out.write(bytes.subarray(offset));
      wait = 0;
    } catch (error) {
      if (!(error instanceof Deno.errors.WouldBlock)) throw error;
      wait = Math.min(wait + 1, 10);
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }
}

/** Writes all of `bytes`. */
async function writeAll(out: { write(p: Uint8Array): Promise<number> }, bytes: Uint8Array) {
  let offset = 0;
  while (offset < bytes.length) {
    try {
      offset += await out.write(bytes.subarray(offset));
    } catch (error) {
      if (error instanceof Deno.errors.WouldBlock) {
        throw new Error("sync_tunnel: stdout is non-blocking: run rsync with --blocking-io");
      }
      throw error;
    }
  }
}

/** Reads the next chunk of stdin (`null` at its end), riding out a non-blocking descriptor. */
async function readStdin(buffer: Uint8Array): Promise<Uint8Array | null> {
  for (let wait = 1;; wait = Math.min(wait + 1, 10)) {
    try {
      const n = await Deno.stdin.read(buffer);
      return n === null ? null : buffer.slice(0, n);
    } catch (error) {
      if (!(error instanceof Deno.errors.WouldBlock)) throw error;
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }
}

/**
 * Flow control for the upstream direction: a WebSocket server cannot push
 * back on what it receives, so the agent acknowledges what rsync has taken
 * and this side keeps at most SYNC_WINDOW_BYTES unacknowledged (the
 * agent ends a transfer whose client sends more).
 */
class Window {
  #sent = 0;
  #acked = 0;
  #closed = false;
  #wake: (() => void) | null = null;

  async reserve(bytes: number): Promise<void> {
    while (!this.#closed && this.#sent - this.#acked + bytes > SYNC_WINDOW_BYTES) {
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
    this.#sent += bytes;
  }

  acknowledge(total: number): void {
    this.#acked = Math.max(this.#acked, total);
    this.#wake?.();
  }

  close(): void {
    this.#closed = true;
    this.#wake?.();
  }
}

/** Carries our stdin to the agent, within the window, then says when it ends. */
async function pumpStdin(ws: WsClient, flow: Window): Promise<void> {
  const buffer = new Uint8Array(SYNC_MESSAGE_BYTES / 4);
  for (let chunk = await readStdin(buffer); chunk; chunk = await readStdin(buffer)) {
    await flow.reserve(chunk.length);
    await ws.send(chunk);
  }
  await ws.send(JSON.stringify({ eof: true }));
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text || null;
  }
}

if (import.meta.main) {
  // Under --stdio=swapped our stderr is rsync's connection: a failure must
  // be told on stdout, never thrown into the data stream.
  const swapped = Deno.args.includes("--stdio=swapped");
  try {
    Deno.exit(await main(Deno.args));
  } catch (error) {
    const text = `sync_tunnel: ${error instanceof Error ? error.message : String(error)}\n`;
    await (swapped ? Deno.stdout : Deno.stderr).write(new TextEncoder().encode(text)).catch(() =>
      0
    );
    Deno.exit(255);
  }
}
