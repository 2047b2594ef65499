// Identity providers: who is on the other end of a connection. `tailscale`
// asks tailscaled (its LocalAPI over the unix socket, or the `tailscale whois
// --json` CLI); `loopback` gives every loopback peer one configured identity.
// Identity only ever comes from the connection's peer address.

import { CollectingSink } from "../executor/sinks.ts";
import { runProcess } from "../executor/_spawn.ts";
import type { IdentityConfig } from "./config.ts";
import { formatHostPort, isLoopback, unmapAddress } from "./_net.ts";
import { type CallerIdentity, loopbackIdentity, parseWhois } from "./_whois.ts";

/** The peer is not a node of this tailnet (whois knows nothing of it). */
export class UnknownPeer extends Error {
  /** @param message What the provider said. */
  constructor(message: string) {
    super(message);
    this.name = "UnknownPeer";
  }
}

/** The provider could not answer (tailscaled down, CLI missing, bad answer). */
export class IdentityUnavailable extends Error {
  /**
   * @param message What went wrong.
   * @param options The cause.
   */
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "IdentityUnavailable";
  }
}

/** The agent host's own tailnet identity. */
export interface TailnetSelf {
  /** Its MagicDNS name. */
  name: string;
  /** Its tailnet addresses. */
  addresses: string[];
}

/** Maps a connection's peer address to a caller. */
export interface IdentityProvider {
  /**
   * Who is calling from `ip`:`port`.
   *
   * @throws {UnknownPeer} When the peer is not known.
   * @throws {IdentityUnavailable} When the provider cannot answer.
   */
  identify(ip: string, port: number): Promise<CallerIdentity>;
  /** The agent host's own tailnet identity, when the provider knows it. */
  self(ip: string): Promise<TailnetSelf | undefined>;
  /** Releases the provider's connections. */
  close(): void;
}

/** How long a whois answer is reused. */
const KNOWN_TTL_MS = 5_000;
/** How long "unknown peer" is remembered. */
const UNKNOWN_TTL_MS = 1_000;
/** How long the host's own identity is reused. */
const SELF_TTL_MS = 60_000;
/** At most this many answers are kept. */
const CACHE_LIMIT = 4096;
/** How long one whois may take. */
const WHOIS_TIMEOUT_MS = 5_000;

/** Builds the provider `config` names. */
export function createIdentityProvider(config: IdentityConfig): IdentityProvider {
  if (config.provider === "loopback") return new LoopbackProvider(config.identity);
  const source = config.cli !== undefined
    ? new CliWhois(config.cli)
    : new LocalApiWhois(config.socket!);
  return new TailscaleProvider(source, config.capmap);
}

class LoopbackProvider implements IdentityProvider {
  readonly #selector: string;
  constructor(selector: string) {
    this.#selector = selector;
  }
  identify(ip: string, port: number): Promise<CallerIdentity> {
    const peer = formatHostPort(unmapAddress(ip), port);
    if (!isLoopback(ip)) {
      return Promise.reject(new UnknownPeer(`${peer} is not a loopback peer`));
    }
    return Promise.resolve(loopbackIdentity(this.#selector, peer));
  }
  self(): Promise<TailnetSelf | undefined> {
    return Promise.resolve(undefined);
  }
  close(): void {}
}

/** One whois lookup: the JSON text of the answer, or `null` for an unknown peer. */
interface WhoisSource {
  readonly describe: string;
  lookup(addr: string): Promise<string | null>;
  close(): void;
}

class TailscaleProvider implements IdentityProvider {
  readonly #source: WhoisSource;
  readonly #capmap?: string;
  readonly #cache = new Map<string, { value: CallerIdentity | string; expires: number }>();
  readonly #pending = new Map<string, Promise<CallerIdentity>>();
  #self?: { value: TailnetSelf | undefined; expires: number };

  constructor(source: WhoisSource, capmap?: string) {
    this.#source = source;
    this.#capmap = capmap;
  }

  identify(ip: string, port: number): Promise<CallerIdentity> {
    const peer = formatHostPort(unmapAddress(ip), port);
    const cached = this.#cache.get(peer);
    if (cached && cached.expires > performance.now()) {
      return typeof cached.value === "string"
        ? Promise.reject(new UnknownPeer(cached.value))
        : Promise.resolve(cached.value);
    }
    let pending = this.#pending.get(peer);
    if (!pending) {
      pending = this.#lookup(peer).finally(() => this.#pending.delete(peer));
      this.#pending.set(peer, pending);
    }
    return pending;
  }

  async #lookup(peer: string): Promise<CallerIdentity> {
    const text = await this.#source.lookup(peer);
    if (text === null) {
      const message = `${peer} is not a node of this tailnet (${this.#source.describe}: no match)`;
      this.#remember(peer, message, UNKNOWN_TTL_MS);
      throw new UnknownPeer(message);
    }
    let identity: CallerIdentity;
    try {
      identity = parseWhois(text, peer, this.#capmap);
    } catch (error) {
      throw new IdentityUnavailable(
        `${this.#source.describe} gave an answer for ${peer} that is not a whois document: ${
          error instanceof Error ? error.message : error
        }`,
        { cause: error },
      );
    }
    this.#remember(peer, identity, KNOWN_TTL_MS);
    return identity;
  }

  #remember(peer: string, value: CallerIdentity | string, ttl: number): void {
    if (this.#cache.size >= CACHE_LIMIT) {
      const now = performance.now();
      for (const [key, entry] of this.#cache) if (entry.expires <= now) this.#cache.delete(key);
      // Still full: drop the oldest entries (a Map iterates in insertion order).
      for (const key of this.#cache.keys()) {
        if (this.#cache.size < CACHE_LIMIT) break;
        this.#cache.delete(key);
      }
    }
    this.#cache.set(peer, { value, expires: performance.now() + ttl });
  }

  async self(ip: string): Promise<TailnetSelf | undefined> {
    if (this.#self && this.#self.expires > performance.now()) return this.#self.value;
    let value: TailnetSelf | undefined;
    try {
      const text = await this.#source.lookup(unmapAddress(ip));
      if (text !== null) {
        const me = parseWhois(text, ip);
        if (me.nodeName) value = { name: me.nodeName, addresses: me.addresses };
      }
    } catch {
      // Not known, or tailscaled is down: observe still answers, without it.
    }
    this.#self = { value, expires: performance.now() + SELF_TTL_MS };
    return value;
  }

  close(): void {
    this.#source.close();
  }
}

/** tailscaled's LocalAPI over its unix socket. */
class LocalApiWhois implements WhoisSource {
  readonly describe: string;
  readonly #path: string;
  #client?: Deno.HttpClient;

  constructor(path: string) {
    this.#path = path;
    this.describe = `tailscaled LocalAPI at ${path}`;
  }

  async lookup(addr: string): Promise<string | null> {
    this.#client ??= Deno.createHttpClient({ proxy: { transport: "unix", path: this.#path } });
    let response: Response;
    try {
      response = await fetch(
        `http://local-tailscaled.sock/localapi/v0/whois?addr=${encodeURIComponent(addr)}`,
        { client: this.#client, signal: AbortSignal.timeout(WHOIS_TIMEOUT_MS) },
      );
    } catch (error) {
      throw new IdentityUnavailable(
        `cannot reach ${this.describe} (is tailscaled running?): ${
          error instanceof Error ? error.message : error
        }`,
        { cause: error },
      );
    }
    let body: string;
    try {
      // (The timeout above covers the body too: a tailscaled that stalls mid-answer.)
      body = await response.text();
    } catch (error) {
      throw new IdentityUnavailable(
        `${this.describe} broke off its answer (${response.status}): ${
          error instanceof Error ? error.message : error
        }`,
        { cause: error },
      );
    }
    if (response.status === 404) return null;
    if (!response.ok) {
      throw new IdentityUnavailable(
        `${this.describe} answered ${response.status}: ${body.trim().slice(0, 200)}`,
      );
    }
    return body;
  }

  close(): void {
    this.#client?.close();
    this.#client = undefined;
  }
}

/** `tailscale whois --json IP:PORT`, where only the CLI can reach tailscaled (macOS GUI app). */
class CliWhois implements WhoisSource {
  readonly describe: string;
  readonly #cli: string;
  readonly #env: Record<string, string>;

  constructor(cli: string) {
    this.#cli = cli;
    this.describe = `${cli} whois`;
    this.#env = {};
    for (const name of ["PATH", "HOME"]) {
      try {
        const value = Deno.env.get(name);
        if (value) this.#env[name] = value;
      } catch {
        // Not readable under this permission set.
      }
    }
  }

  async lookup(addr: string): Promise<string | null> {
    const sink = new CollectingSink();
    let result;
    try {
      result = await runProcess({
        argv: [this.#cli, "whois", "--json", addr],
        env: this.#env,
        timeoutMs: WHOIS_TIMEOUT_MS,
        killGraceMs: 500,
        drainMs: 200,
      }, sink);
    } catch (error) {
      throw new IdentityUnavailable(
        `cannot run ${this.describe}: ${error instanceof Error ? error.message : error}`,
        { cause: error },
      );
    }
    if (result.exitCode === 0) return sink.text("stdout");
    const stderr = sink.text("stderr").trim();
    if (result.exitCode === 1 && /peer not found|no match/i.test(stderr)) return null;
    throw new IdentityUnavailable(
      `${this.describe} ${addr} failed (${
        result.timedOut ? "timed out" : `exit ${result.exitCode ?? result.signal}`
      }): ${stderr.slice(0, 200)}`,
    );
  }

  close(): void {}
}
