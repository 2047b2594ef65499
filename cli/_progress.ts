// Progress of push/pull: bars on a terminal (cli-progress, drawn on stderr),
// throttled `progress` events with --json, nothing at all otherwise (rsync
// is then not even asked for its progress output).

import process from "node:process";
// @ts-types="./_cli_progress.d.ts"
import cliProgress, { type SingleBar } from "npm:cli-progress@^3.12.0";
import type { SyncProgress } from "../mod.ts";
import type { Output } from "./_output.ts";

/** How often a host's `progress` event may be written with --json. */
const EVENT_INTERVAL_MS = 250;

/** Progress reporting for one invocation's transfers. */
export interface Progress {
  /** The `onProgress` callback for one host, or `undefined` when progress is not shown. */
  for(host: string): ((progress: SyncProgress) => void) | undefined;
  /** Marks a host's transfer as ended. */
  done(host: string, ok: boolean): void;
  /** Removes the bars (before the summary is printed). */
  stop(): void;
}

/** The progress reporting `output` calls for. */
export function progressFor(output: Output, hosts: readonly string[]): Progress {
  if (output.json) return eventProgress(output);
  if (output.interactive) return barProgress(hosts);
  return { for: () => undefined, done() {}, stop() {} };
}

function eventProgress(output: Output): Progress {
  const last = new Map<string, number>();
  return {
    for: (host) => (progress) => {
      const now = performance.now();
      if (progress.percent < 100 && now - (last.get(host) ?? -Infinity) < EVENT_INTERVAL_MS) return;
      last.set(host, now);
      output.event({ type: "progress", host, ...progress });
    },
    done() {},
    stop() {},
  };
}

function barProgress(hosts: readonly string[]): Progress {
  const width = Math.max(...hosts.map((h) => h.length));
  const multi = new cliProgress.MultiBar({
    format: "{host} [{bar}] {percentage}% {rate}",
    stream: process.stderr,
    hideCursor: true,
    clearOnComplete: false,
    stopOnComplete: false,
    barsize: 30,
    // Redraw on updates only: no timer keeps the process alive.
    noTTYOutput: false,
    fps: 10,
  }, cliProgress.Presets.shades_classic);
  const bars = new Map<string, SingleBar>();
  const bar = (host: string) => {
    let b = bars.get(host);
    if (!b) {
      b = multi.create(100, 0, { host: host.padEnd(width), rate: "" });
      bars.set(host, b);
    }
    return b;
  };
  return {
    for: (host) => {
      bar(host);
      return (progress) => bar(host).update(progress.percent, { rate: progress.rate });
    },
    done: (host, ok) => {
      const b = bars.get(host);
      if (b && ok) b.update(100);
    },
    stop: () => multi.stop(),
  };
}
