import { assert, assertEquals, assertThrows } from "@deps/assert";
import { TransportError } from "../executor/errors.ts";
import { parseProbe, probeArgv } from "./_ssh_observe.ts";

// The probe's output as recorded on a Mac mini (M2, macOS 14.5): uname,
// sysctl kern.boottime / vm.loadavg / hw.memsize, vm_stat and df -P -k in
// their native formats.
const MACOS_PROBE_OUTPUT = `@@uname
Darwin mac-mini-ci.local 23.5.0 arm64
@@now
1718100000
@@boottime
{ sec = 1718000000, usec = 500000 } Mon Jun 10 06:13:20 2024
@@sysctl_loadavg
{ 2.15 2.40 2.51 }
@@memsize
17179869184
@@vm_stat
Mach Virtual Memory Statistics: (page size of 16384 bytes)
Pages free:                               12345.
Pages active:                            234567.
Pages inactive:                          223344.
Pages speculative:                         1234.
Pages throttled:                              0.
Pages wired down:                        123456.
Pages purgeable:                           4567.
"Translation faults":                 123456789.
Pages copy-on-write:                    1234567.
Pages zero filled:                     23456789.
Pages reactivated:                       123456.
Pages purged:                             12345.
File-backed pages:                       123456.
Anonymous pages:                         234567.
Pages stored in compressor:              345678.
Pages occupied by compressor:            123456.
Decompressions:                          234567.
Compressions:                            345678.
Pageins:                                 456789.
Pageouts:                                  1234.
Swapins:                                      0.
Swapouts:                                     0.
@@roots
x101
@@df
Filesystem     1024-blocks      Used Available Capacity  Mounted on
/dev/disk3s5     482797652 220473432 239048292    48%    /System/Volumes/Data
/dev/disk3s5     482797652 220473432 239048292    48%    /System/Volumes/Data
@@end
`;

Deno.test("parseProbe reads recorded macOS output (sysctl, vm_stat, BSD df)", () => {
  const roots = ["/Users/ci/builds", "/Users/ci/missing", "/Users/ci/cache"];
  const facts = parseProbe(MACOS_PROBE_OUTPUT, "mac-1", roots);
  assertEquals(facts.host, "mac-1");
  assertEquals(facts.hostname, "mac-mini-ci.local");
  assertEquals(facts.os, "darwin");
  assertEquals(facts.arch, "aarch64");
  assertEquals(facts.kernel, "23.5.0");
  assertEquals(facts.uptimeSeconds, 99999.5);
  assertEquals(facts.loadAverage, [2.15, 2.4, 2.51]);
  assertEquals(facts.memory, {
    totalBytes: 17179869184,
    availableBytes: (12345 + 223344) * 16384,
  });
  // The missing root is left out; the others map onto df's rows in order.
  assertEquals(facts.disks.map((d) => d.path), ["/Users/ci/builds", "/Users/ci/cache"]);
  assertEquals(facts.disks[0], {
    path: "/Users/ci/builds",
    totalBytes: 482797652 * 1024,
    usedBytes: 220473432 * 1024,
    availableBytes: 239048292 * 1024,
  });
  assert(!Number.isNaN(Date.parse(facts.observedAt)));
});

Deno.test("parseProbe names what it cannot read", () => {
  const broken = MACOS_PROBE_OUTPUT.replace("{ 2.15 2.40 2.51 }", "n/a");
  const error = assertThrows(
    () => parseProbe(broken, "mac-1", []),
    TransportError,
    "load averages",
  );
  assertEquals(error.kind, "protocol");
  assertThrows(() => parseProbe("", "mac-1", []), TransportError, "uname");
  assertThrows(
    () => parseProbe("@@uname\nLinux h 6.1.0 x86_64\n", "h", []),
    TransportError,
    "uptime",
  );
});

Deno.test({
  name: "the probe run by this machine's /bin/sh parses to what Deno sees (Linux /proc path)",
  ignore: Deno.build.os !== "linux",
  fn: async () => {
    const [program, ...args] = probeArgv(["/", "/no/such/root", "/tmp"]);
    const out = await new Deno.Command(program, { args }).output();
    assert(out.success, new TextDecoder().decode(out.stderr));
    const facts = parseProbe(new TextDecoder().decode(out.stdout), "here", [
      "/",
      "/no/such/root",
      "/tmp",
    ]);
    assertEquals(facts.hostname, Deno.hostname());
    assertEquals(facts.os, "linux");
    assertEquals(facts.arch, Deno.build.arch);
    assertEquals(facts.kernel, Deno.osRelease());
    assertEquals(facts.memory.totalBytes, Deno.systemMemoryInfo().total);
    assert(Math.abs(facts.uptimeSeconds - Deno.osUptime()) < 5);
    assertEquals(facts.disks.map((d) => d.path), ["/", "/tmp"]);
    assert(
      facts.disks.every((d) => d.totalBytes > 0 && d.usedBytes + d.availableBytes <= d.totalBytes),
    );
  },
});
