// The agent's front door. Deno.serve has no header, body or idle timeouts,
// no cap on connections, and it dies when accept(2) runs out of descriptors;
// and it reads a request before anyone knows who sent it. So the agent
// accepts connections itself: the peer is identified (whois) before a byte is
// read; an unknown peer gets a fixed 401 and the connection is closed;
// connections are capped overall and per peer, and timed out while a request
// head dribbles in or the connection sits idle; EMFILE on accept is logged
// and survived. An identified connection is relayed byte for byte to a
// Deno.serve on an internal loopback port, and the handler learns the real
// peer from the relay's own source port, which only the front knows: never
// from anything a client sends.

import { NDJSON_TYPE } from "../transports/_agent_protocol.ts";
import { formatHostPort, type ListenAddress, unmapAddress } from "./_net.ts";
import { IdentityUnavailable, UnknownPeer } from "./_identity.ts";

/** Why the front closed a connection without handing it to the app. */
export interface Refusal {
  /** The peer, `IP:PORT`. */
  from: string;
  /** The status answered (0 when the connection was closed without an answer). */
  status: number;
  /** In words. */
  reason: string;
}

/** The limits the front enforces. */
export interface FrontLimits {
  /** Connections open at once (all peers). */
  maxConnections: number;
  /** Connections one identified peer address may hold. */
  maxConnectionsPerPeer: number;
  /** A request head must arrive within this of its first byte (and of the connection's start). */
  headerTimeoutMs: number;
  /** A connection may be idle this long between requests. */
  idleTimeoutMs: number;
}

/** What the front needs from the agent. */
export interface FrontOptions {
  /** Where to listen. */
  listen: ListenAddress;
  /** The limits. */
  limits: FrontLimits;
  /**
   * Identifies a peer before anything is read from it.
   *
   * @throws {UnknownPeer} A peer nobody knows: 401.
   * @throws {IdentityUnavailable} whois is down: 503.
   */
  identify(ip: string, port: number): Promise<unknown>;
  /** The app: called with the real peer as `info.remoteAddr`. */
  handler(
    request: Request,
    info: Deno.ServeHandlerInfo<Deno.NetAddr>,
  ): Response | Promise<Response>;
  /** Told of every connection closed without reaching the app (it audits them, at a bounded rate). */
  onRefused(refusal: Refusal): void;
}

/**
 * Unidentified connections (whois pending, or being refused) one address may
 * hold: a caller's burst of new connections (a fan-out of steps) passes, a
 * flood is closed at once.
 */
const MAX_UNIDENTIFIED_PER_PEER = 64;
/** Unidentified connections all addresses together may hold. */
const MAX_UNIDENTIFIED = 256;
/** How long an address whois did not know is refused without asking again, whatever its port. */
const UNKNOWN_ADDRESS_MS = 1000;
/** How long a refused connection is drained (so the answer is read, not reset) before it is closed. */
const LINGER_MS = 1000;
/** How long accept waits after a failure (EMFILE) before it tries again. */
const ACCEPT_BACKOFF_MS = 50;
/** How often the timeouts are checked. */
const TICK_MS = 250;
/** Relay buffer, per direction. */
const RELAY_BYTES = 256 * 1024;

const encoder = new TextEncoder();

/** One relayed connection. */
class Relay {
  readonly peer: Deno.NetAddr;
  readonly ip: string;
  readonly client: Deno.Conn;
  readonly upstream: Deno.TcpConn;
  /** Requests being answered now. */
  inFlight = 0;
  /** Requests begun on this connection. */
  requests = 0;
  upgraded = false;
  /** Since when the connection waits for a request (no request in flight). */
  waitingSince = performance.now();
  /** The first byte received while waiting, if any. */
  firstByteAt: number | null = null;
  closed = false;

  constructor(peer: Deno.NetAddr, client: Deno.Conn, upstream: Deno.TcpConn) {
    this.peer = peer;
    this.ip = unmapAddress(peer.hostname);
    this.client = client;
    this.upstream = upstream;
  }

  received(): void {
    if (this.inFlight === 0 && this.firstByteAt === null) this.firstByteAt = performance.now();
  }

  started(): void {
    this.inFlight++;
    this.requests++;
    this.firstByteAt = null;
  }

  ended(): void {
    if (--this.inFlight > 0) return;
    this.waitingSince = performance.now();
    this.firstByteAt = null;
  }

  /** Why this connection must be closed now, or null. */
  expired(now: number, limits: FrontLimits): string | null {
    if (this.upgraded || this.inFlight > 0) return null;
    if (this.firstByteAt !== null) {
      return now - this.firstByteAt > limits.headerTimeoutMs
        ? `the request head did not arrive within ${
          limits.headerTimeoutMs / 1000
        } s (agent.header_timeout)`
        : null;
    }
    const limit = this.requests === 0 ? limits.headerTimeoutMs : limits.idleTimeoutMs;
    return now - this.waitingSince > limit
      ? `idle for ${limit / 1000} s (agent.${this.requests === 0 ? "header" : "idle"}_timeout)`
      : null;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const conn of [this.client, this.upstream]) {
      try {
        conn.close();
      } catch {
        // Already closed.
      }
    }
  }
}

/** The front: a listener, the relays, and the internal HTTP server. */
export class Front {
  /** The address the front listens on. */
  readonly addr: Deno.NetAddr;
  /** Resolves when the front has stopped. */
  readonly finished: Promise<void>;
  readonly #opts: FrontOptions;
  readonly #listener: Deno.Listener<Deno.TcpConn, Deno.NetAddr>;
  readonly #relays = new Map<number, Relay>();
  readonly #pumping = new Set<Promise<unknown>>();
  readonly #perPeer = new Map<string, number>();
  readonly #unidentified = new Map<string, number>();
  /** Addresses whois said it does not know, and when. */
  readonly #unknown = new Map<string, { at: number; message: string }>();
  #unidentifiedTotal = 0;
  #open = 0;
  #internal!: Deno.HttpServer<Deno.NetAddr>;
  #internalPort = 0;
  #stopping = false;
  readonly #ticker: number;
  #acceptErrors = { window: 0, count: 0 };

  private constructor(opts: FrontOptions, listener: Deno.Listener<Deno.TcpConn, Deno.NetAddr>) {
    this.#opts = opts;
    this.#listener = listener;
    this.addr = listener.addr;
    this.#serveInternal();
    this.#ticker = setInterval(() => this.#expire(), TICK_MS) as unknown as number;
    Deno.unrefTimer(this.#ticker);
    this.finished = this.#acceptLoop();
  }

  /** Listens on `opts.listen` and starts serving. */
  static start(opts: FrontOptions): Front {
    const listener = Deno.listen({
      hostname: opts.listen.hostname,
      port: opts.listen.port,
      transport: "tcp",
    });
    return new Front(opts, listener);
  }

  /** Connections open now (relayed and unidentified). */
  get connections(): number {
    return this.#open;
  }

  /**
   * Stops accepting, closes idle connections, lets answers in flight end
   * (or closes them after `timeoutMs`).
   */
  async shutdown(timeoutMs: number): Promise<void> {
    this.#stopping = true;
    try {
      this.#listener.close();
    } catch {
      // Already closed.
    }
    for (const relay of this.#relays.values()) {
      if (relay.inFlight === 0 && !relay.upgraded) this.#drop(relay);
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline = new Promise((resolve) => (timer = setTimeout(resolve, timeoutMs)));
    // The answers in flight end, then their last bytes still pass the relays.
    await Promise.race([
      this.#internal.shutdown().then(() => Promise.all(this.#pumping)),
      deadline,
    ]);
    clearTimeout(timer);
    for (const relay of this.#relays.values()) this.#drop(relay);
    clearInterval(this.#ticker);
    await this.finished;
  }

  #serveInternal(): void {
    const server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen: () => {} },
      this.#dispatch,
    );
    this.#internal = server;
    this.#internalPort = server.addr.port;
    // Deno.serve ends its loop on an accept error (EMFILE): serve again, on a new port.
    server.finished.catch((error) => {
      if (this.#stopping) return;
      this.#complain(`the internal HTTP server stopped (${error}); starting it again`);
      setTimeout(() => {
        if (!this.#stopping) this.#serveInternal();
      }, ACCEPT_BACKOFF_MS);
    });
  }

  readonly #dispatch = async (
    request: Request,
    info: Deno.ServeHandlerInfo<Deno.NetAddr>,
  ): Promise<Response> => {
    const relay = info.remoteAddr.hostname === "127.0.0.1"
      ? this.#relays.get(info.remoteAddr.port)
      : undefined;
    if (!relay || relay.closed) {
      // Someone on this host connected to the internal port directly.
      return new Response(
        JSON.stringify({
          error: { code: "unknown_peer", message: "connect to the agent's address" },
        }),
        { status: 401, headers: { "content-type": "application/json", connection: "close" } },
      );
    }
    relay.started();
    let response: Response;
    try {
      response = await this.#opts.handler(request, {
        remoteAddr: relay.peer,
        completed: info.completed,
      });
    } catch (error) {
      relay.ended();
      throw error;
    }
    if (response.status === 101) {
      relay.upgraded = true;
      return response;
    }
    // Only a stream of events (a run) is read as it comes; any other answer
    // is whole: it goes out with its Content-Length, and its request has ended.
    if (response.body === null || !response.headers.get("content-type")?.startsWith(NDJSON_TYPE)) {
      relay.ended();
      return response.body === null ? response : new Response(await response.bytes(), response);
    }
    return new Response(tracked(response.body, () => relay.ended()), response);
  };

  async #acceptLoop(): Promise<void> {
    for (;;) {
      let conn: Deno.TcpConn;
      try {
        conn = await this.#listener.accept();
      } catch (error) {
        if (this.#stopping || error instanceof Deno.errors.BadResource) return;
        // EMFILE, ENFILE, ENOMEM: refuse by not accepting for a moment; the
        // kernel keeps the connections waiting in the backlog.
        this.#complain(`cannot accept a connection: ${error}`);
        await new Promise((resolve) => setTimeout(resolve, ACCEPT_BACKOFF_MS));
        continue;
      }
      void this.#handle(conn).catch((error) => {
        this.#complain(`a connection failed: ${error}`);
        try {
          conn.close();
        } catch {
          // Already closed.
        }
      });
    }
  }

  async #handle(conn: Deno.TcpConn): Promise<void> {
    const peer = conn.remoteAddr;
    const ip = unmapAddress(peer.hostname);
    const from = formatHostPort(ip, peer.port);
    const limits = this.#opts.limits;
    this.#open++;
    let counted = false;
    try {
      if (this.#stopping) return void closeQuietly(conn);
      const unidentified = this.#unidentified.get(ip) ?? 0;
      if (
        unidentified >= MAX_UNIDENTIFIED_PER_PEER || this.#unidentifiedTotal >= MAX_UNIDENTIFIED
      ) {
        this.#opts.onRefused({
          from,
          status: 0,
          reason: `too many connections being identified (${
            unidentified >= MAX_UNIDENTIFIED_PER_PEER
              ? `${MAX_UNIDENTIFIED_PER_PEER} from this address`
              : `${MAX_UNIDENTIFIED} in all`
          }): closed at once`,
        });
        return void closeQuietly(conn);
      }
      this.#unidentified.set(ip, unidentified + 1);
      this.#unidentifiedTotal++;
      counted = true;
      try {
        const known = this.#unknown.get(ip);
        if (known && performance.now() - known.at < UNKNOWN_ADDRESS_MS) {
          throw new UnknownPeer(known.message);
        }
        await this.#opts.identify(ip, peer.port);
      } catch (error) {
        const unknown = error instanceof UnknownPeer;
        if (!unknown && !(error instanceof IdentityUnavailable)) throw error;
        const message = error instanceof Error ? error.message : String(error);
        if (unknown) this.#rememberUnknown(ip, message);
        this.#opts.onRefused({
          from,
          status: unknown ? 401 : 503,
          reason: unknown ? `unknown peer: ${message}` : `identity unavailable: ${message}`,
        });
        await refuse(conn, unknown ? 401 : 503, {
          code: unknown ? "unknown_peer" : "identity_unavailable",
          message: unknown
            ? `the agent does not know this caller: ${message}`
            : `the agent cannot identify callers right now: ${message}`,
        });
        return;
      }
      const held = this.#perPeer.get(ip) ?? 0;
      const over = held >= limits.maxConnectionsPerPeer
        ? `this address holds ${held} connections, the agent's limit per peer (agent.max_connections_per_peer)`
        : this.#relays.size >= limits.maxConnections
        ? `the agent holds ${this.#relays.size} connections, its limit (agent.max_connections)`
        : null;
      if (over !== null) {
        this.#opts.onRefused({ from, status: 503, reason: `${over}: refused` });
        await refuse(conn, 503, { code: "too_many_connections", message: `${over}; retry later` });
        return;
      }
      // Identified and within its limits: from here on it counts as the peer's.
      this.#release(ip);
      counted = false;
      let upstream: Deno.TcpConn;
      try {
        upstream = await Deno.connect({ hostname: "127.0.0.1", port: this.#internalPort });
      } catch (error) {
        this.#complain(`cannot reach the internal server: ${error}`);
        await refuse(conn, 503, {
          code: "agent_busy",
          message: "the agent cannot take this connection now (out of descriptors?); retry later",
        });
        return;
      }
      // Each write of the relay goes out as it is (no Nagle delay on top of the app's own).
      conn.setNoDelay(true);
      upstream.setNoDelay(true);
      await this.#relay(new Relay(peer, conn, upstream));
    } finally {
      if (counted) this.#release(ip);
      this.#open--;
    }
  }

  #rememberUnknown(ip: string, message: string): void {
    if (this.#unknown.size >= 4096) {
      const now = performance.now();
      for (const [key, entry] of this.#unknown) {
        if (now - entry.at >= UNKNOWN_ADDRESS_MS || this.#unknown.size >= 4096) {
          this.#unknown.delete(key);
        }
      }
    }
    this.#unknown.set(ip, { at: performance.now(), message });
  }

  #release(ip: string): void {
    const left = (this.#unidentified.get(ip) ?? 1) - 1;
    if (left > 0) this.#unidentified.set(ip, left);
    else this.#unidentified.delete(ip);
    this.#unidentifiedTotal--;
  }

  async #relay(relay: Relay): Promise<void> {
    const port = relay.upstream.localAddr.port;
    this.#relays.set(port, relay);
    this.#perPeer.set(relay.ip, (this.#perPeer.get(relay.ip) ?? 0) + 1);
    const pumps = Promise.all([
      // The client gone (or done sending with nothing in flight: a closed
      // WebSocket, a keep-alive it gave up) ends the relay; one that only
      // half-closes after its request still gets its answer.
      pump(relay.client, relay.upstream, () => relay.received()).then((ended) => {
        if (ended === "broken" || relay.upgraded || relay.inFlight === 0) relay.close();
      }),
      // Once the app has answered and closed its side, the relay is done.
      pump(relay.upstream, relay.client, () => {}).then(() => relay.close()),
    ]);
    this.#pumping.add(pumps);
    try {
      await pumps;
    } finally {
      this.#pumping.delete(pumps);
      this.#drop(relay);
    }
  }

  /** Forgets the relay first (no later connection on its port can pass for it), then closes it. */
  #drop(relay: Relay): void {
    const port = relay.upstream.localAddr.port;
    if (this.#relays.get(port) === relay) {
      this.#relays.delete(port);
      const left = (this.#perPeer.get(relay.ip) ?? 1) - 1;
      if (left > 0) this.#perPeer.set(relay.ip, left);
      else this.#perPeer.delete(relay.ip);
    }
    relay.close();
  }

  #expire(): void {
    const now = performance.now();
    for (const relay of this.#relays.values()) {
      const why = relay.expired(now, this.#opts.limits);
      if (why === null) continue;
      if (relay.requests === 0 || relay.firstByteAt !== null) {
        this.#opts.onRefused({
          from: formatHostPort(relay.ip, relay.peer.port),
          status: 0,
          reason: `closed: ${why}`,
        });
      }
      this.#drop(relay);
    }
  }

  /** The agent's own output, at most a few lines per 10 s. */
  #complain(message: string): void {
    const now = performance.now();
    const errors = this.#acceptErrors;
    if (now - errors.window > 10_000) {
      if (errors.count > 5) console.error(`ops-agent: (${errors.count - 5} more such lines)`);
      [errors.window, errors.count] = [now, 0];
    }
    if (++errors.count <= 5) console.error(`ops-agent: ${message}`);
  }
}

/**
 * Copies `from` to `to` until `from` ends (then half-closes `to`: "ended") or
 * either side breaks ("broken": the caller closes both).
 */
async function pump(
  from: Deno.Conn,
  to: Deno.Conn,
  onData: () => void,
): Promise<"ended" | "broken"> {
  const buffer = new Uint8Array(RELAY_BYTES);
  try {
    for (;;) {
      const n = await from.read(buffer);
      if (n === null) break;
      onData();
      let offset = 0;
      while (offset < n) offset += await to.write(buffer.subarray(offset, n));
    }
    await to.closeWrite().catch(() => {});
    return "ended";
  } catch {
    closeQuietly(from);
    return "broken";
  }
}

/** A body that calls `done` once, when it has been read to its end or cancelled. */
function tracked(body: ReadableStream<Uint8Array>, done: () => void): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  let ended = false;
  const end = () => {
    if (!ended) [ended] = [true, done()];
  };
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const { value, done: finished } = await reader.read();
        if (finished) {
          end();
          controller.close();
        } else controller.enqueue(value);
      } catch (error) {
        end();
        controller.error(error);
      }
    },
    cancel(reason) {
      end();
      return reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
}

/** Answers `status` with a JSON error and closes, reading (and dropping) what the client still sends for a moment. */
async function refuse(
  conn: Deno.Conn,
  status: number,
  error: { code: string; message: string },
): Promise<void> {
  const body = JSON.stringify({ error });
  const reason = status === 401
    ? "Unauthorized"
    : status === 429
    ? "Too Many Requests"
    : "Service Unavailable";
  const head = `HTTP/1.1 ${status} ${reason}\r\ncontent-type: application/json\r\ncontent-length: ${
    encoder.encode(body).length
  }\r\nconnection: close\r\n${status === 503 ? "retry-after: 1\r\n" : ""}\r\n`;
  const sink = new Uint8Array(16 * 1024);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<null>((resolve) => {
    timer = setTimeout(() => resolve(null), LINGER_MS);
  });
  try {
    // The answer goes out once the client has sent its request (an HTTP
    // client that reads an answer before it has written takes it for a broken
    // connection); what it sends is dropped unread, never parsed or kept.
    let drained = await Promise.race([conn.read(sink), timeout]) ?? 0;
    await conn.write(encoder.encode(head + body));
    await conn.closeWrite();
    while (drained < 64 * 1024) {
      const n = await Promise.race([conn.read(sink), timeout]);
      if (n === null) break;
      drained += n;
    }
  } catch {
    // The client is gone already.
  } finally {
    clearTimeout(timer);
    closeQuietly(conn);
  }
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}
