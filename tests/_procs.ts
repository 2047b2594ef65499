// Process-tree checks for tests, read from Linux's /proc: which processes are
// in a process group, and whether a pid is still alive (zombies count as dead).

/** `true` where /proc can answer these questions (Linux). */
export const HAS_PROC: boolean = (() => {
  try {
    return Deno.statSync("/proc/self/stat").isFile;
  } catch {
    return false;
  }
})();

interface ProcStat {
  pid: number;
  state: string;
  ppid: number;
  pgid: number;
  sid: number;
}

function readStat(pid: number | string): ProcStat | null {
  let text: string;
  try {
    text = Deno.readTextFileSync(`/proc/${pid}/stat`);
  } catch {
    return null;
  }
  // The command name is in parentheses and may hold spaces: read after the last ")".
  const rest = text.slice(text.lastIndexOf(")") + 2).split(" ");
  return {
    pid: Number(pid),
    state: rest[0],
    ppid: Number(rest[1]),
    pgid: Number(rest[2]),
    sid: Number(rest[3]),
  };
}

function allStats(): ProcStat[] {
  const stats: ProcStat[] = [];
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    const stat = readStat(entry.name);
    if (stat) stats.push(stat);
  }
  return stats;
}

/** Live (non-zombie) pids whose process group is `pgid`. */
export function groupMembers(pgid: number): number[] {
  return allStats()
    .filter((s) => s.pgid === pgid && s.state !== "Z")
    .map((s) => s.pid);
}

/** Live (non-zombie) pids whose session is `sid`. */
export function sessionMembers(sid: number): number[] {
  return allStats()
    .filter((s) => s.sid === sid && s.state !== "Z")
    .map((s) => s.pid);
}

/** Whether `pid` exists and is not a zombie. */
export function isAlive(pid: number): boolean {
  const stat = readStat(pid);
  return stat !== null && stat.state !== "Z";
}

/** Live pids whose command line contains `needle`. */
export function pidsWithCommandLine(needle: string): number[] {
  const pids: number[] = [];
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      const cmdline = Deno.readTextFileSync(`/proc/${entry.name}/cmdline`).replaceAll("\0", " ");
      if (cmdline.includes(needle) && isAlive(Number(entry.name))) pids.push(Number(entry.name));
    } catch {
      // Gone while we looked.
    }
  }
  return pids;
}

/** Polls `check` every 20 ms until it is true or `ms` pass; returns its last value. */
export async function waitFor(check: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (check()) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return check();
}

/** Live (non-zombie) pids descended from `pid` (its children, theirs, ...). */
export function descendantsOf(pid: number): number[] {
  const stats = allStats().filter((s) => s.state !== "Z");
  const found = new Set([pid]);
  for (let grew = true; grew;) {
    grew = false;
    for (const s of stats) {
      if (!found.has(s.pid) && found.has(s.ppid)) {
        found.add(s.pid);
        grew = true;
      }
    }
  }
  found.delete(pid);
  return [...found];
}

/** A step's argv that prints its own signal dispositions and mask, as /proc shows them. */
export const SIGNAL_STATE: readonly string[] = [
  "grep",
  "-E",
  "^Sig(Ign|Blk):",
  "/proc/self/status",
];

/**
 * The standard signals (1-31) ignored (`Ign`) and blocked (`Blk`), read from
 * SIGNAL_STATE's output, by number. (32 and 33 are glibc's own, which Deno's
 * children inherit ignored, and no program can use.)
 */
export function ignoredOrBlocked(text: string): { Ign: number[]; Blk: number[] } {
  const found = { Ign: [] as number[], Blk: [] as number[] };
  for (const [, kind, hex] of text.matchAll(/^Sig(Ign|Blk):\s*([0-9a-f]+)$/gm)) {
    const bits = BigInt(`0x${hex}`) & 0x7fffffffn;
    for (let n = 1; n <= 31; n++) {
      if (bits & (1n << BigInt(n - 1))) found[kind as "Ign" | "Blk"].push(n);
    }
  }
  return found;
}

/**
 * The process group, as this host numbers it, of the live process whose
 * command line holds `token` (`null` when there is none). A step in a PID
 * namespace of its own (the agent's step isolation) sees other numbers: its
 * `$$` is not its pid on the host, so tests find it by a token in its argv.
 */
export function hostGroupOf(token: string): number | null {
  const pid = pidsWithCommandLine(token)[0];
  return pid === undefined ? null : readStat(pid)?.pgid ?? null;
}

/** A unique number for a step's `sleep`, so that the test can find it on the host. */
export function sleepToken(): string {
  return `300.${Math.floor(Math.random() * 1e9)}`;
}
