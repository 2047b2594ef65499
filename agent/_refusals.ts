// Audit lines for connections refused before they reached the app (unknown
// peers, whois down, over a limit, timed out), at a bounded rate: a peer
// nobody knows must not be able to grow the audit log without limit. The
// first refusal of an address in a minute is a line of its own; the next
// ones of that minute are counted into its next line (`repeated`); past
// PER_MINUTE itemised lines a minute, refusals are only counted, and a note
// says how many there were.

import type { AuditLog } from "./_audit.ts";
import type { Refusal } from "./_front.ts";

/** Itemised refusal lines per minute, all addresses together. */
const PER_MINUTE = 60;
const MINUTE_MS = 60_000;

/** Writes refusals to the audit log at a bounded rate. */
export class RefusalAudit {
  readonly #audit: AuditLog;
  readonly #seen = new Map<string, { since: number; repeated: number }>();
  #window = performance.now();
  #itemised = 0;
  #suppressed = 0;
  #suppressedPeers = new Set<string>();
  readonly #timer: number;

  constructor(audit: AuditLog) {
    this.#audit = audit;
    this.#timer = setInterval(() => this.#roll(), MINUTE_MS) as unknown as number;
    Deno.unrefTimer(this.#timer);
  }

  /** Records one refusal. */
  record(refusal: Refusal, endpoint = "connection"): void {
    const now = performance.now();
    if (now - this.#window > MINUTE_MS) this.#roll();
    const ip = refusal.from.replace(/:\d+$/, "");
    const seen = this.#seen.get(ip);
    if (seen && now - seen.since < MINUTE_MS) {
      seen.repeated++;
      return;
    }
    if (this.#itemised >= PER_MINUTE) {
      this.#suppressed++;
      this.#suppressedPeers.add(ip);
      return;
    }
    this.#itemised++;
    this.#seen.set(ip, { since: now, repeated: 0 });
    void this.#audit.write({
      time: new Date().toISOString(),
      endpoint,
      from: refusal.from,
      who: null,
      decision: "denied",
      reason: refusal.reason,
      status: refusal.status,
      ...(seen && seen.repeated > 0 ? { repeated: seen.repeated } : {}),
    });
  }

  /** Writes the counts of the minute gone by, and starts a new one. */
  #roll(): void {
    const now = performance.now();
    for (const [ip, seen] of this.#seen) {
      if (now - seen.since < MINUTE_MS) continue;
      this.#seen.delete(ip);
      if (seen.repeated > 0) {
        void this.#audit.write({
          time: new Date().toISOString(),
          event: "refusals_repeated",
          reason:
            `${seen.repeated} more connections from ${ip} were refused in the minute after its last line`,
          from: ip,
          count: seen.repeated,
        });
      }
    }
    if (this.#suppressed > 0) {
      void this.#audit.write({
        time: new Date().toISOString(),
        event: "refusals_suppressed",
        reason:
          `${this.#suppressed} refused connections from ${this.#suppressedPeers.size} addresses were not itemised (over ${PER_MINUTE} lines a minute)`,
        count: this.#suppressed,
        peers: this.#suppressedPeers.size,
      });
    }
    this.#window = now;
    this.#itemised = 0;
    this.#suppressed = 0;
    this.#suppressedPeers = new Set();
  }

  /** Writes what is still counted. */
  close(): void {
    clearInterval(this.#timer);
    this.#seen.forEach((seen) => (seen.since = -Infinity));
    this.#roll();
  }
}
