// The remote shell rsync uses to reach an ops-agent (`rsync --rsh`): instead
// of ssh, it opens the agent's /v1/sync WebSocket and carries rsync's stdin
// and stdout over it. rsync runs it as
//
//   <deno> run ... sync_tunnel.ts --url=http://AGENT:7070 [--local-address=IP] HOST rsync --server ...
//
// The agent identifies the caller by the connection's source address (whois),
// validates the `rsync --server` argument vector and checks the capability
// before it upgrades; a refusal arrives as an HTTP status, which this program
// reports on stderr as one `ops-exec-sync-refused: {...}` line (read by
// AgentRpc) and exits 255.
//
// Messages after the upgrade: binary = rsync's bytes, both ways. Text from
// the agent: {"stderr": "..."} (the server rsync's stderr) and, last,
// {"exit": N} (its exit status, which becomes this program's). Text from
// here: {"eof": true} once rsync closes our stdin.

import { parseArgs } from "@deps/cli";
import { WsClient, WsHandshakeError } from "./_ws_client.ts";

/** The stderr prefix of a refusal report. */
export const REFUSED_PREFIX = "ops-exec-sync-refused: ";

/** What the agent said when it refused the tunnel. */
export interface SyncRefusal {
  /** The HTTP status (0 when the agent could not be reached). */
  status: number;
  /** The agent's JSON error body, when it sent one. */
  body: unknown;
  /** A sentence describing the refusal. */
  message: string;
}

/** Parses a refusal line written by this program, if `line` is one. */
export function parseRefusal(line: string): SyncRefusal | null {
  const at = line.indexOf(REFUSED_PREFIX);
  if (at < 0) return null;
  try {
    return JSON.parse(line.slice(at + REFUSED_PREFIX.length)) as SyncRefusal;
  } catch {
    return null;
  }
}

async function main(args: string[]): Promise<number> {
  // Our own options come first, in --name=value form; then rsync's host name.
  const split = args.findIndex((arg) => !arg.startsWith("--"));
  const { values } = parseArgs({
    args: args.slice(0, split < 0 ? args.length : split),
    options: { url: { type: "string" }, "local-address": { type: "string" } },
  });
  const remote = args.slice(split + 1); // after the host name rsync passes
  if (!values.url || split < 0 || remote[0] !== "rsync") {
    console.error("sync_tunnel: usage: --url=URL [--local-address=IP] HOST rsync --server ...");
    return 2;
  }
  const url = new URL("/v1/sync", values.url);
  url.searchParams.set("argv", JSON.stringify(remote));

  let ws: WsClient;
  try {
    ws = await WsClient.connect(url.href, { localAddress: values["local-address"] });
  } catch (error) {
    const refusal: SyncRefusal = error instanceof WsHandshakeError
      ? { status: error.status, body: parseJson(error.body), message: error.message }
      : { status: 0, body: null, message: String(error) };
    console.error(`${REFUSED_PREFIX}${JSON.stringify(refusal)}`);
    return 255;
  }

  const upstream = pumpStdin(ws);
  let exit = 255;
  const stderr = Deno.stderr.writable.getWriter();
  const stdout = Deno.stdout.writable.getWriter();
  for await (const message of ws.messages) {
    if (typeof message !== "string") {
      await stdout.write(message);
      continue;
    }
    const event = parseJson(message) as { stderr?: string; exit?: number } | null;
    if (event?.stderr !== undefined) {
      await stderr.write(new TextEncoder().encode(`${event.stderr}\n`));
    }
    if (event?.exit !== undefined) exit = event.exit;
  }
  await upstream.catch(() => {});
  await stdout.close().catch(() => {});
  return exit;
}

/** Carries our stdin to the agent, then says so when it ends. */
async function pumpStdin(ws: WsClient): Promise<void> {
  for await (const chunk of Deno.stdin.readable) await ws.send(chunk);
  await ws.send(JSON.stringify({ eof: true }));
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text || null;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
