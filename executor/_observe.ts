// Host facts of the machine this process runs on, from Deno's own APIs (no
// /proc reads, so it works under a narrow permission set) and `df` for disks.

import { baseEnvironment } from "./_env.ts";
import type { DiskUsage, HostObservation } from "./types.ts";

/**
 * Observes the local machine.
 *
 * @param host The executor's name for the host.
 * @param roots The roots whose disk use to report.
 * @param opts A signal that kills `df` (a hung mount) and rejects.
 */
export async function observeLocalHost(
  host: string,
  roots: readonly string[],
  opts: { signal?: AbortSignal } = {},
): Promise<HostObservation> {
  const [one, five, fifteen] = Deno.loadavg();
  const memory = Deno.systemMemoryInfo();
  return {
    host,
    hostname: Deno.hostname(),
    os: Deno.build.os,
    arch: Deno.build.arch,
    kernel: Deno.osRelease(),
    uptimeSeconds: Deno.osUptime(),
    loadAverage: [one, five, fifteen],
    memory: { totalBytes: memory.total, availableBytes: memory.available },
    disks: await diskUsage(roots, opts),
    observedAt: new Date().toISOString(),
  };
}

/**
 * Disk use of each root that exists, from POSIX `df -P -k` (the same on Linux
 * and macOS). Roots that do not exist are left out.
 */
export async function diskUsage(
  roots: readonly string[],
  opts: { signal?: AbortSignal } = {},
): Promise<DiskUsage[]> {
  const existing: string[] = [];
  const unverified: string[] = [];
  for (const root of roots) {
    try {
      await Deno.stat(root);
      existing.push(root);
    } catch (error) {
      // Not allowed to look (a narrow --allow-read, as the agent's): df may.
      if (error instanceof Deno.errors.NotCapable) unverified.push(root);
      // Otherwise not there (yet): nothing to measure.
    }
  }
  const disks = existing.length > 0 ? await df(existing, opts.signal) : [];
  // One df per unverified root, so that a missing one cannot shift the rows of the others.
  for (const root of unverified) disks.push(...await df([root], opts.signal));
  return roots.flatMap((root) => disks.filter((disk) => disk.path === root));
}

async function df(roots: string[], signal?: AbortSignal): Promise<DiskUsage[]> {
  signal?.throwIfAborted();
  const out = await new Deno.Command("df", {
    args: ["-P", "-k", ...roots],
    env: baseEnvironment(),
    clearEnv: true,
    stdin: "null",
    stderr: "null",
    signal,
  }).output();
  signal?.throwIfAborted();
  return parseDf(new TextDecoder().decode(out.stdout), roots);
}

const DF_ROW = /^.*?\s+(\d+)\s+(\d+)\s+(\d+)\s+\d+%\s+.*$/;

/**
 * Parses `df -P -k` output (a header, then one line per operand, in order).
 *
 * @param text The output.
 * @param roots The operands, in the order given to df.
 */
export function parseDf(text: string, roots: readonly string[]): DiskUsage[] {
  const rows = text.trim().split("\n").slice(1);
  const disks: DiskUsage[] = [];
  rows.forEach((row, i) => {
    // Name and mount point may both hold spaces: anchor on the numbers.
    const match = DF_ROW.exec(row);
    if (!match || i >= roots.length) return;
    const [total, used, available] = match.slice(1, 4).map(Number);
    disks.push({
      path: roots[i],
      totalBytes: total * 1024,
      usedBytes: used * 1024,
      availableBytes: available * 1024,
    });
  });
  return disks;
}
