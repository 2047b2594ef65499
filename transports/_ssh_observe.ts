// observe() over ssh: one POSIX sh probe whose output reads the same way on
// Linux (/proc) and macOS (sysctl, vm_stat), and its parser.

import { TransportError } from "../executor/errors.ts";
import { parseDf } from "../executor/_observe.ts";
import type { HostObservation } from "../executor/types.ts";

/**
 * The probe. Its arguments are the roots whose disk use to report. Each
 * section starts with a line `@@name`; only `uname` and `df` cost an exec on
 * Linux (the rest are shell built-ins reading /proc).
 */
export const PROBE_SCRIPT: string = String.raw`
LC_ALL=C
export LC_ALL
echo @@uname
uname -s -n -r -m
if [ -r /proc/uptime ]; then
  echo @@proc_uptime
  read -r up _ </proc/uptime && echo "$up"
else
  echo @@now
  date +%s
  echo @@boottime
  sysctl -n kern.boottime
fi
if [ -r /proc/loadavg ]; then
  echo @@proc_loadavg
  read -r a b c _ </proc/loadavg && echo "$a $b $c"
else
  echo @@sysctl_loadavg
  sysctl -n vm.loadavg
fi
if [ -r /proc/meminfo ]; then
  echo @@proc_meminfo
  while IFS= read -r line; do echo "$line"; done </proc/meminfo
else
  echo @@memsize
  sysctl -n hw.memsize
  echo @@vm_stat
  vm_stat
fi
n=$#
flags=
for root in "$@"; do
  if [ -e "$root" ]; then flags="$flags"1; set -- "$@" "$root"; else flags="$flags"0; fi
done
shift "$n"
echo @@roots
echo "x$flags"
echo @@df
if [ "$#" -gt 0 ]; then df -P -k "$@"; fi
echo @@end
`;

/** The probe's argv for `roots`. */
export function probeArgv(roots: readonly string[]): string[] {
  return ["/bin/sh", "-c", PROBE_SCRIPT, "ops-exec-observe", ...roots];
}

/**
 * Reads the probe's output into host facts.
 *
 * @param text The probe's stdout.
 * @param host The executor's name for the host.
 * @param roots The roots given to the probe, in order.
 * @throws {TransportError} `protocol` when a fact cannot be read.
 */
export function parseProbe(text: string, host: string, roots: readonly string[]): HostObservation {
  const sections = splitSections(text);
  const fail = (what: string): never => {
    throw new TransportError(
      "protocol",
      host,
      `observe: cannot read ${what} from the probe output`,
      {
        detail: text.slice(0, 4000),
      },
    );
  };
  const section = (name: string): string | undefined => sections.get(name);

  const uname = (section("uname") ?? "").trim().split(/\s+/);
  if (uname.length < 4) fail("uname -s -n -r -m");
  const [system, hostname, kernel, machine] = uname;

  const uptimeSeconds = readUptime(section) ?? fail("the uptime");
  const loadAverage = readLoad(section) ?? fail("the load averages");
  const memory = readMemory(section) ?? fail("the memory");

  const flags = (section("roots") ?? "").trim().replace(/^x/, "");
  const present = roots.filter((_, i) => flags[i] === "1");
  return {
    host,
    hostname,
    os: system.toLowerCase(),
    arch: ARCH_NAMES[machine] ?? machine,
    kernel,
    uptimeSeconds,
    loadAverage,
    memory,
    disks: present.length > 0 ? parseDf(section("df") ?? "", present) : [],
    observedAt: new Date().toISOString(),
  };
}

/** uname's machine names, as Deno.build.arch spells them. */
const ARCH_NAMES: Record<string, string> = { arm64: "aarch64", amd64: "x86_64" };

function splitSections(text: string): Map<string, string> {
  const sections = new Map<string, string>();
  let name: string | null = null;
  let body: string[] = [];
  for (const line of text.split("\n")) {
    const header = /^@@([a-z_]+)$/.exec(line);
    if (header) {
      if (name) sections.set(name, body.join("\n"));
      name = header[1];
      body = [];
    } else if (name) {
      body.push(line);
    }
  }
  if (name) sections.set(name, body.join("\n"));
  return sections;
}

type Section = (name: string) => string | undefined;

function readUptime(section: Section): number | undefined {
  const proc = section("proc_uptime");
  if (proc !== undefined) return finite(Number(proc.trim()));
  // macOS: kern.boottime reads `{ sec = 1718000000, usec = 512345 } Mon Jun 10 ...`.
  const boot = /sec\s*=\s*(\d+)(?:,\s*usec\s*=\s*(\d+))?/.exec(section("boottime") ?? "");
  const now = Number((section("now") ?? "").trim());
  if (!boot || !Number.isFinite(now) || now <= 0) return undefined;
  return finite(now - (Number(boot[1]) + Number(boot[2] ?? 0) / 1e6));
}

function readLoad(section: Section): [number, number, number] | undefined {
  // /proc/loadavg gives "0.10 0.20 0.30"; sysctl vm.loadavg gives "{ 0.10 0.20 0.30 }".
  const text = section("proc_loadavg") ?? section("sysctl_loadavg");
  const numbers = (text ?? "").replace(/[{}]/g, " ").trim().split(/\s+/).slice(0, 3).map(Number);
  if (numbers.length !== 3 || !numbers.every(Number.isFinite)) return undefined;
  return [numbers[0], numbers[1], numbers[2]];
}

function readMemory(section: Section): HostObservation["memory"] | undefined {
  const meminfo = section("proc_meminfo");
  if (meminfo !== undefined) {
    const kib = (key: string) => {
      const match = new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(meminfo);
      return match ? Number(match[1]) * 1024 : undefined;
    };
    const total = kib("MemTotal");
    // Kernels before 3.14 have no MemAvailable: estimate as the kernel did.
    const available = kib("MemAvailable") ??
      ((kib("MemFree") ?? 0) + (kib("Buffers") ?? 0) + (kib("Cached") ?? 0));
    return total === undefined ? undefined : { totalBytes: total, availableBytes: available };
  }
  // macOS: hw.memsize in bytes; available as psutil reckons it, free + inactive pages.
  const total = Number((section("memsize") ?? "").trim());
  const vmStat = section("vm_stat") ?? "";
  const pageSize = /page size of (\d+) bytes/.exec(vmStat);
  const pages = (label: string) => {
    const match = new RegExp(`^${label}:\\s+(\\d+)\\.?$`, "m").exec(vmStat);
    return match ? Number(match[1]) : undefined;
  };
  const free = pages("Pages free");
  const inactive = pages("Pages inactive");
  if (!Number.isFinite(total) || total <= 0 || !pageSize || free === undefined) return undefined;
  return {
    totalBytes: total,
    availableBytes: (free + (inactive ?? 0)) * Number(pageSize[1]),
  };
}

function finite(value: number): number | undefined {
  return Number.isFinite(value) && value >= 0 ? value : undefined;
}
