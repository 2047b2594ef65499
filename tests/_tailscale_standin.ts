// The one stand-in the tests may use: tailscaled. A LocalAPI server on one or
// more unix sockets (`GET /localapi/v0/whois?addr=IP:PORT`, answering like
// tailscaled does, pitfalls included) and a `tailscale` CLI script
// (`tailscale whois --json IP:PORT`), both answering from ONE shared map of
// peer address -> whois document. Documents are raw JSON text in the exact
// shapes of tests/whois/ (copied from ../shared/whois/): the int64 IDs stay
// digits in the text, never a JSON.parse'd number.
//
// Later multi-host tests: start one stand-in, give each agent its own socket
// (`sockets`) or the CLI (`binDir` first on its PATH), and `set()` peers.

import { join } from "@deps/path";

/** The socket path the agent permission set allows for tests and development. */
export const STANDIN_SOCKET = "/tmp/ops-agent/tailscaled.sock";

/** The whois documents of tests/whois/. */
export type WhoisFixture = "user-node" | "tagged-node" | "capmap-grant" | "headscale-node";

const FIXTURES = new URL("./whois/", import.meta.url);

/** Edits to a fixture, done on the text so the big IDs stay as written. */
export interface WhoisEdits {
  /** `UserProfile.LoginName`. */
  loginName?: string;
  /** `Node.StableID`. */
  stableId?: string;
  /** `Node.Name` (FQDN with trailing dot). */
  name?: string;
  /** `Node.ComputedName`. */
  computedName?: string;
  /** `Node.Addresses` (with prefix lengths, e.g. `100.77.1.9/32`). */
  addresses?: string[];
  /** `Node.Tags` (added when the fixture has none). */
  tags?: string[];
  /** `UserProfile.Groups` (added when the fixture has none). */
  groups?: string[];
  /** The whole `CapMap` value (`null` for none). */
  capMap?: Record<string, unknown> | null;
  /** `Node.ID`, as the digits to write (e.g. above 2^53). */
  nodeIdDigits?: string;
}

/**
 * The text of a whois fixture, with edits applied textually.
 *
 * @param fixture Which document of tests/whois/.
 * @param edits Field values to replace or add.
 */
export function whoisText(fixture: WhoisFixture, edits: WhoisEdits = {}): string {
  let text = Deno.readTextFileSync(new URL(`${fixture}.json`, FIXTURES));
  const setString = (key: string, value: string | undefined) => {
    if (value === undefined) return;
    const pattern = new RegExp(`"${key}": "(?:[^"\\\\]|\\\\.)*"`);
    if (!pattern.test(text)) throw new Error(`${fixture}: no ${key} to replace`);
    text = text.replace(pattern, `"${key}": ${JSON.stringify(value)}`);
  };
  const setArray = (key: string, value: string[] | undefined, after: RegExp) => {
    if (value === undefined) return;
    const pattern = new RegExp(`"${key}": \\[[^\\]]*\\]`);
    const json = `"${key}": ${JSON.stringify(value)}`;
    if (pattern.test(text)) text = text.replace(pattern, json);
    else {
      const anchor = after.exec(text);
      if (!anchor) throw new Error(`${fixture}: nowhere to add ${key}`);
      const end = anchor.index + anchor[0].length;
      const comma = anchor[0].endsWith(",");
      text = `${text.slice(0, end)}${comma ? "" : ","}\n    ${json}${comma ? "," : ""}${
        text.slice(end)
      }`;
    }
  };
  setString("LoginName", edits.loginName);
  setString("StableID", edits.stableId);
  setString("Name", edits.name);
  setString("ComputedName", edits.computedName);
  setArray("Addresses", edits.addresses, /$^/);
  // Node.Tags goes after Node.Addresses; UserProfile.Groups after its DisplayName.
  setArray("Tags", edits.tags, /"Addresses": \[[^\]]*\],/);
  setArray("Groups", edits.groups, /"DisplayName": "[^"]*",?/);
  if (edits.capMap !== undefined) {
    const pattern = /"CapMap": (?:null|\{[\s\S]*\})\s*\}\s*$/;
    if (!pattern.test(text)) throw new Error(`${fixture}: no CapMap`);
    text = text.replace(pattern, `"CapMap": ${JSON.stringify(edits.capMap)}\n}\n`);
  }
  if (edits.nodeIdDigits !== undefined) {
    if (!/^\d+$/.test(edits.nodeIdDigits)) throw new Error("nodeIdDigits must be digits");
    text = text.replace(/("Node": \{\s*"ID": )\d+/, `$1${edits.nodeIdDigits}`);
  }
  // A DisplayName that ended its object gained a comma above: keep it JSON.
  text = text.replace(/,(\s*)\}/g, "$1}");
  JSON.parse(text); // still a document (IDs lose precision here, which is the point of keeping text)
  return text;
}

/** Options of {@linkcode TailnetStandin.start}. */
export interface TailnetStandinOptions {
  /** Unix sockets to serve the LocalAPI on. Default: [{@linkcode STANDIN_SOCKET}]. */
  sockets?: string[];
  /** Where its own directory (CLI script, map) is created. Default /tmp/ops-agent. */
  parent?: string;
}

/** A request the LocalAPI stand-in received. */
export interface StandinRequest {
  /** The socket it came in on. */
  socket: string;
  /** The `addr` query parameter, as given. */
  addr: string | null;
  /** The status answered. */
  status: number;
}

/**
 * tailscaled's stand-in: LocalAPI sockets and a CLI script over one map.
 */
export class TailnetStandin {
  /** A directory holding the `tailscale` CLI script: put it first on an agent's PATH. */
  readonly binDir: string;
  /** The sockets served. */
  readonly sockets: readonly string[];
  /** Every LocalAPI request, in order. */
  readonly requests: StandinRequest[] = [];
  readonly #mapDir: string;
  readonly #root: string;
  readonly #map = new Map<string, string>();
  readonly #faults = new Map<string, "stall" | "reset">();
  readonly #servers: Deno.HttpServer[] = [];

  private constructor(root: string, sockets: string[]) {
    this.#root = root;
    this.binDir = join(root, "bin");
    this.#mapDir = join(root, "map");
    this.sockets = sockets;
  }

  /** Starts the LocalAPI servers and writes the CLI script. */
  static async start(opts: TailnetStandinOptions = {}): Promise<TailnetStandin> {
    await Deno.mkdir("/tmp/ops-agent", { recursive: true });
    const root = await Deno.makeTempDir({
      dir: opts.parent ?? "/tmp/ops-agent",
      prefix: "tailnet-",
    });
    const standin = new TailnetStandin(root, opts.sockets ?? [STANDIN_SOCKET]);
    await Deno.mkdir(standin.binDir);
    await Deno.mkdir(standin.#mapDir);
    await standin.#writeCli();
    for (const socket of standin.sockets) {
      await Deno.remove(socket).catch(() => {});
      const server = Deno.serve(
        { path: socket, transport: "unix", onListen: () => {} },
        (request) => standin.#answer(socket, request),
      );
      standin.#servers.push(server);
    }
    return standin;
  }

  /**
   * Maps a peer to a whois document. `address` is `IP` (any port) or
   * `IP:PORT` / `[IPv6]:PORT` (that connection only, checked first).
   */
  set(address: string, whois: string): void {
    this.#map.set(address, whois);
    Deno.writeTextFileSync(join(this.#mapDir, fileKey(address)), whois);
  }

  /**
   * Makes the LocalAPI answer `address` (as {@linkcode TailnetStandin.set}
   * takes it) with a 200 whose body never ends (`stall`) or breaks off
   * (`reset`): a tailscaled that hangs or dies mid-answer.
   */
  fault(address: string, fault: "stall" | "reset"): void {
    this.#faults.set(address, fault);
  }

  /** Forgets a peer. */
  delete(address: string): void {
    this.#map.delete(address);
    Deno.removeSync(join(this.#mapDir, fileKey(address)));
  }

  /** The document for `addr` as tailscaled would find it, or undefined. */
  lookup(addr: string): string | undefined {
    return this.#map.get(addr) ?? this.#map.get(ipOf(addr));
  }

  /** Stops the servers and removes the files. */
  async close(): Promise<void> {
    await Promise.all(this.#servers.map((server) => server.shutdown()));
    for (const socket of this.sockets) await Deno.remove(socket).catch(() => {});
    await Deno.remove(this.#root, { recursive: true }).catch(() => {});
  }

  /** Same as {@linkcode TailnetStandin.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #answer(socket: string, request: Request): Response {
    const url = new URL(request.url);
    const addr = url.searchParams.get("addr");
    const reply = (status: number, body: string, type = "text/plain; charset=utf-8") => {
      this.requests.push({ socket, addr, status });
      return new Response(body, { status, headers: { "content-type": type } });
    };
    // tailscaled refuses browser-borne requests and any other Host.
    if (request.headers.has("referer") || request.headers.has("origin")) {
      return reply(403, "invalid localapi request\n");
    }
    if (request.headers.get("host") !== "local-tailscaled.sock") {
      return reply(403, "invalid localapi Host header\n");
    }
    if (url.pathname !== "/localapi/v0/whois") return reply(404, "404 page not found\n");
    if (request.method !== "GET") return reply(405, "want GET\n");
    if (!addr) return reply(400, "missing 'addr' parameter\n");
    if (!isAddr(addr)) return reply(400, `invalid 'addr' parameter: ${addr}\n`);
    const fault = this.#faults.get(addr) ?? this.#faults.get(ipOf(addr));
    if (fault !== undefined) {
      this.requests.push({ socket, addr, status: 200 });
      const body = new ReadableStream<Uint8Array>({
        start(controller) {
          controller.enqueue(new TextEncoder().encode('{"Node": {"Name": "half'));
          if (fault === "reset") {
            setTimeout(() => controller.error(new Error("tailscaled died mid-answer")), 50);
          }
        },
      });
      return new Response(body, { status: 200, headers: { "content-type": "application/json" } });
    }
    const doc = this.lookup(addr);
    if (doc === undefined) return reply(404, `no match for ${addr}\n`);
    return reply(200, doc, "application/json");
  }

  async #writeCli(): Promise<void> {
    const script = `#!/bin/sh
# tailscale CLI stand-in (tests/_tailscale_standin.ts): only "whois --json IP[:PORT]".
map='${this.#mapDir}'
if [ "$1" != whois ]; then echo "tailscale stand-in: only 'whois' is implemented" >&2; exit 2; fi
shift
if [ "$1" != --json ]; then echo "tailscale stand-in: only 'whois --json' is implemented" >&2; exit 2; fi
addr=$2
if [ -z "$addr" ]; then echo "usage: tailscale whois [--json] ip[:port]" >&2; exit 1; fi
case "$addr" in
  \\[*) ip=\${addr#\\[}; ip=\${ip%%]*} ;;
  *.*:*) ip=\${addr%:*} ;;
  *) ip=$addr ;;
esac
for key in "$addr" "$ip"; do
  file="$map/$(printf %s "$key" | tr -d '[]' | tr ':' '_')"
  if [ -f "$file" ]; then cat "$file"; exit 0; fi
done
echo "peer not found" >&2
exit 1
`;
    const path = join(this.binDir, "tailscale");
    await Deno.writeTextFile(path, script, { mode: 0o755 });
    await Deno.chmod(path, 0o755);
  }
}

function fileKey(address: string): string {
  return address.replaceAll("[", "").replaceAll("]", "").replaceAll(":", "_");
}

function ipOf(addr: string): string {
  const v6 = /^\[([^\]]+)\](?::\d+)?$/.exec(addr);
  if (v6) return v6[1];
  const v4 = /^(\d+\.\d+\.\d+\.\d+)(?::\d+)?$/.exec(addr);
  return v4 ? v4[1] : addr;
}

function isAddr(addr: string): boolean {
  return /^\d+\.\d+\.\d+\.\d+(?::\d+)?$/.test(addr) || /^\[[0-9a-fA-F:.]+\](?::\d+)?$/.test(addr) ||
    /^[0-9a-fA-F:]+$/.test(addr);
}
