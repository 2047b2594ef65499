// The rsync argv builder and readers for both flavours: rsync 3.x and
// openrsync. The texts below are what the real programs printed (rsync
// 3.5.0 and openrsync at ../shared/peers); the tests at the end run them.

import {
  assert,
  assertEquals,
  assertFalse,
  assertRejects,
  assertStringIncludes,
} from "@deps/assert";
import { CapabilitySet } from "../capability/mod.ts";
import { TransportError } from "../executor/errors.ts";
import type { SyncProgress } from "../executor/types.ts";
import { OPENRSYNC } from "../tests/_openrsync.ts";
import { missing, RSYNC } from "../tests/_prereq.ts";
import {
  mkpathPlan,
  parseAmount,
  parseStats,
  ProgressReader,
  pushDirectory,
  remoteShellCommand,
  remoteShellScript,
  rsyncArgv,
  rsyncCause,
  rsyncOptions,
  rsyncRemoteShell,
  runRsync,
} from "./_rsync.ts";
import { askRsyncVersion, parseRsyncVersion, type RsyncFlavour } from "./_rsync_flavour.ts";

const RSYNC3: RsyncFlavour = { kind: "rsync", version: "3.5.0", protocol: 32, apple: false };
const RSYNC_OLD: RsyncFlavour = { kind: "rsync", version: "3.1.3", protocol: 31, apple: false };
const OPEN: RsyncFlavour = { kind: "openrsync", version: "", protocol: 27, apple: false };
const APPLE: RsyncFlavour = { kind: "openrsync", version: "2.6.9", protocol: 29, apple: true };

Deno.test("parseRsyncVersion tells rsync, openrsync and Apple's openrsync apart", () => {
  assertEquals(
    parseRsyncVersion(
      "rsync  version 3.5.0  protocol version 32\nCopyright (C) 1996-2026 by Andrew Tridgell",
    ),
    RSYNC3,
  );
  assertEquals(parseRsyncVersion("rsync  version 2.6.9  protocol version 29"), {
    kind: "rsync",
    version: "2.6.9",
    protocol: 29,
    apple: false,
  });
  assertEquals(parseRsyncVersion("rsync  version v3.2.7  protocol version 31")?.version, "3.2.7");
  assertEquals(parseRsyncVersion("openrsync: protocol version 27"), OPEN);
  assertEquals(
    parseRsyncVersion("openrsync: protocol version 29\nrsync version 2.6.9 compatible"),
    APPLE,
  );
  // Output of an rc file before the answer does not hide it.
  assertEquals(parseRsyncVersion("hello from .bashrc\nopenrsync: protocol version 27"), OPEN);
  assertEquals(parseRsyncVersion("sh: 1: rsync: not found"), null);
});

Deno.test("the real programs say what they are", async () => {
  if (missing([RSYNC !== null, "rsync"], [OPENRSYNC !== null, "openrsync"])) return;
  const rsync = await askRsyncVersion(RSYNC!);
  assertEquals(rsync.flavour?.kind, "rsync");
  assert(Number(rsync.flavour!.version.split(".")[0]) >= 3, rsync.text);
  const open = await askRsyncVersion(OPENRSYNC!);
  assertEquals(open.flavour, OPEN);
  const none = await askRsyncVersion("/nonexistent/rsync");
  assertEquals(none.flavour, null);
  assertEquals(none.exitCode, 127);
});

Deno.test("rsyncOptions speaks each local rsync's words", () => {
  const all = { delete: true, exclude: ["*.log"], dryRun: true, compress: true, checksum: true };
  const progress = { onProgress: () => {} };
  assertEquals(rsyncOptions({ ...all, ...progress }, RSYNC3), [
    "-rlptgo",
    "--stats",
    "--mkpath",
    "--info=progress2",
    "--delete",
    "--exclude=*.log",
    "--checksum",
    "--dry-run",
    "--compress",
  ]);
  // openrsync rejects --mkpath and --info=progress2; deletions are counted from -v.
  const open = rsyncOptions({ ...all, ...progress }, OPEN);
  assertFalse(open.includes("--mkpath"));
  assertFalse(open.some((o) => o.startsWith("--info")));
  assert(open.includes("--progress") && open.includes("--verbose"));
  // rsync 3.x with openrsync at the other end: --verbose too (no deletion count in its stats).
  assert(
    rsyncOptions({ delete: true }, RSYNC3, { remote: OPEN, mkpath: false }).includes("--verbose"),
  );
  assertFalse(rsyncOptions({ delete: true }, RSYNC3, { remote: RSYNC3 }).includes("--verbose"));
  assertFalse(rsyncOptions({}, RSYNC_OLD).includes("--mkpath"), "--mkpath is 3.2.3+");
  assert(rsyncOptions(progress, RSYNC_OLD).includes("--info=progress2"), "progress2 is 3.1+");
});

Deno.test("mkpathPlan: who creates a missing destination directory", () => {
  assertEquals(mkpathPlan("sync.push", RSYNC3, RSYNC3), "option");
  assertEquals(mkpathPlan("sync.push", OPEN, RSYNC3), "inject");
  assertEquals(mkpathPlan("sync.push", RSYNC3, OPEN), "none");
  assertEquals(mkpathPlan("sync.push", OPEN, OPEN), "none");
  assertEquals(mkpathPlan("sync.pull", RSYNC3, OPEN), "option", "a pull's receiver is local");
  assertEquals(mkpathPlan("sync.pull", OPEN, RSYNC3), "none");
});

Deno.test("pushDirectory creates only the gated path, or a parent the same grant covers", () => {
  const caps = CapabilitySet.of("sync.push:/srv/app");
  assertEquals(pushDirectory(caps, "/srv/app/releases/1.2/"), "/srv/app/releases/1.2");
  assertEquals(pushDirectory(caps, "/srv/app/releases/1.2"), "/srv/app/releases");
  assertEquals(pushDirectory(caps, "/srv/app/"), "/srv/app");
  assertEquals(pushDirectory(caps, "/srv/app"), null, "the parent of a root is not granted");
  assertEquals(pushDirectory(CapabilitySet.of("sync.push"), "/x/y"), "/x");
});

Deno.test("rsyncArgv: the remote path is quoted for the login shell only where rsync does not escape it", () => {
  const route = {
    host: "h",
    action: "sync.push" as const,
    localPath: "/l/",
    remotePath: "/srv/new dir/ñ/",
    remotePrefix: "h:",
    remoteShellParsesPath: true,
  };
  assertEquals(
    rsyncArgv({ ...route, local: OPEN, remote: RSYNC3 }, {}).at(-1),
    "h:'/srv/new dir/ñ/'",
  );
  assertEquals(
    rsyncArgv({ ...route, local: RSYNC3, remote: RSYNC3 }, {}).at(-1),
    "h:/srv/new dir/ñ/",
  );
  assertEquals(
    rsyncArgv({ ...route, local: OPEN, remotePath: "/srv/plain/" }, {}).at(-1),
    "h:/srv/plain/",
  );
  assertEquals(
    rsyncArgv({ ...route, local: OPEN, remoteShellParsesPath: false }, {}).at(-1),
    "h:/srv/new dir/ñ/",
    "the agent's tunnel is no shell",
  );
});

Deno.test("remote shells: plain words joined, quoted for rsync and Apple's, a script for open-source openrsync", async () => {
  assertEquals(rsyncRemoteShell("/usr/bin/ssh", ["-o", "A=b"], "k", OPEN), "/usr/bin/ssh -o A=b");
  const spaced = ["/usr/bin/ssh", "-o", 'IdentityFile="/my keys/id"'];
  assertEquals(
    rsyncRemoteShell(spaced[0], spaced.slice(1), "k", APPLE),
    `/usr/bin/ssh -o 'IdentityFile="/my keys/id"'`,
  );
  const dir = await Deno.makeTempDir({ dir: "/tmp", prefix: "oe-test-" });
  try {
    assertEquals(
      await remoteShellCommand(spaced, { local: RSYNC3 }),
      rsyncRemoteShell(spaced[0], spaced.slice(1)),
    );
    const command = await remoteShellCommand(spaced, { local: OPEN, scriptDir: dir });
    assert(command.startsWith(`/bin/sh ${dir}/rsh-`), command);
    assertFalse(/\s/.test(command.split(" ")[1]), "two words without white space");
    assertEquals(await Deno.readTextFile(command.split(" ")[1]), remoteShellScript(spaced, false));
    // The same words, the same script; other words, another (never rewritten under a reader).
    assertEquals(await remoteShellCommand(spaced, { local: OPEN, scriptDir: dir }), command);
    const other = await remoteShellCommand([...spaced, "--mkpath"], {
      local: OPEN,
      scriptDir: dir,
    });
    assert(other !== command);
    assertEquals(await Deno.readTextFile(command.split(" ")[1]), remoteShellScript(spaced, false));
    // The script runs exactly these words, then rsync's own.
    const echo = await remoteShellCommand(["/usr/bin/printf", "[%s]", "a b", `it's "q"`], {
      local: OPEN,
      scriptDir: dir,
      name: "echo",
    });
    const out = await new Deno.Command("/bin/sh", { args: [echo.split(" ")[1], "host", "x y"] })
      .output();
    assertEquals(new TextDecoder().decode(out.stdout), `[a b][it's "q"][host][x y]`);
    // Swapped stdio: what the program writes to stderr leaves on stdout.
    const swapped = await remoteShellCommand(["/bin/sh", "-c", "echo data >&2; echo diag"], {
      local: OPEN,
      scriptDir: dir,
      name: "swapped",
      swapStdio: true,
    });
    const both = await new Deno.Command("/bin/sh", { args: [swapped.split(" ")[1]] }).output();
    assertEquals(new TextDecoder().decode(both.stdout), "data\n");
    assertEquals(new TextDecoder().decode(both.stderr), "diag\n");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// What the real programs print with --stats.
const RSYNC3_STATS = `
Number of files: 7 (reg: 4, dir: 3)
Number of created files: 7 (reg: 4, dir: 3)
Number of deleted files: 1 (dir: 1)
Number of regular files transferred: 4
Total file size: 200,012 bytes
Total transferred file size: 200,012 bytes
Literal data: 200,012 bytes
Matched data: 0 bytes
File list size: 0
File list generation time: 0.001 seconds
File list transfer time: 0.000 seconds
Total bytes sent: 200,433
Total bytes received: 111

sent 200,433 bytes  received 111 bytes  401,088.00 bytes/sec
total size is 200,012  speedup is 1.00`;
const OPENRSYNC_STATS = `Transfer starting: 7 files
deleting stale.txt
deleting stale/
Number of files: 7
Number of files transferred: 4
Total file size: 200012 B
Total transferred file size: 200012 B
Unmatched data: 200012 B
Matched data: 0 B
File list size: 224 B
Total sent: 200448 B
Total received: 96 B

sent 200448 bytes  received 96 bytes  28245633 bytes/sec
total size is 200012  speedup is 1.00`;

Deno.test("parseStats reads both flavours' --stats into the same numbers", () => {
  assertEquals(parseStats(RSYNC3_STATS.split("\n")), {
    filesTransferred: 4,
    filesCreated: 7,
    filesDeleted: 1,
    totalSize: 200_012,
    literalBytes: 200_012,
    bytesSent: 200_433,
    bytesReceived: 111,
  });
  assertEquals(parseStats(OPENRSYNC_STATS.split("\n")), {
    filesTransferred: 4,
    filesCreated: 0,
    filesDeleted: 2, // its `deleting` lines (-v)
    totalSize: 200_012,
    literalBytes: 200_012,
    bytesSent: 200_448,
    bytesReceived: 96,
  });
  assertEquals(parseAmount("200.012"), 200_012, "digit groups by locale");
  assertEquals(parseAmount("1.5M"), 1_572_864);
  assertEquals(parseAmount("2.0 KiB"), 2048);
});

Deno.test("progress: rsync 3.x reports the whole transfer, openrsync each file (added up)", () => {
  const seen: SyncProgress[] = [];
  const whole = new ProgressReader("whole", (p) => seen.push(p));
  assert(whole.line("      1,234,567  45%   12.34MB/s    0:00:01 (xfr#1, to-chk=5/7)"));
  assertFalse(whole.line("sending incremental file list"));
  assertEquals(seen, [{ bytes: 1_234_567, percent: 45, rate: "12.34MB/s" }]);

  const files: SyncProgress[] = [];
  const open = new ProgressReader("file-index", (p) => files.push(p));
  for (
    const line of [
      "a b.txt",
      "              6 100%    3.69KB/s   00:00:00 (xfer#1, to-check=2/7)",
      "a/b/big",
      "         100000  50%   12.81MB/s   00:00:01",
      "         200000 100%   12.81MB/s   00:00:00 (xfer#2, to-check=4/7)",
      "ünï.txt",
      "              2 100%   00:00:00 (xfer#3, to-check=5/7)",
    ]
  ) open.line(line);
  open.finish();
  assertEquals(files, [
    { bytes: 6, percent: 42, rate: "3.69KB/s" },
    { bytes: 100_006, percent: 42, rate: "12.81MB/s" },
    { bytes: 200_006, percent: 71, rate: "12.81MB/s" },
    { bytes: 200_008, percent: 85, rate: "" }, // under 1 KB/s openrsync prints no rate
    { bytes: 200_008, percent: 100, rate: "" },
  ]);
  const old: SyncProgress[] = [];
  const left = new ProgressReader("files-left", (p) => old.push(p));
  left.line("        1000 100%    1.00MB/s    0:00:00 (xfer#1, to-check=3/4)");
  assertEquals(old[0].percent, 25);
});

Deno.test("rsyncCause quotes the line that says why, not openrsync's usage text", () => {
  assertEquals(
    rsyncCause([
      "/work/shared/peers/openrsync: unrecognized option '--mkpath'",
      "usage: openrsync [-DFP]",
      "\t[--8-bit-output, -8]",
      "\t[--whole-file, -W]",
      "\tsource ... directory",
      "rsync: connection unexpectedly closed (0 bytes received so far) [sender]",
      "rsync error: error in rsync protocol data stream (code 12) at io.c(285) [sender=3.5.0]",
    ]),
    "/work/shared/peers/openrsync: unrecognized option '--mkpath'",
  );
  assertEquals(
    rsyncCause([
      "protocol version mismatch -- is your shell clean?",
      "(see the rsync manpage for an explanation)",
      "rsync error: protocol incompatibility (code 2) at compat.c(622) [sender=3.2.7]",
    ]),
    "protocol version mismatch -- is your shell clean?",
  );
  assertEquals(
    rsyncCause([
      'rsync: [Receiver] mkdir "/x/y" failed: No such file or directory (2)',
      "rsync error: error in file IO (code 11) at main.c(808) [Receiver=3.5.0]",
    ]),
    'rsync: [Receiver] mkdir "/x/y" failed: No such file or directory (2)',
  );
  assertEquals(
    rsyncCause(["rsync error: some files could not be transferred (code 23)"]),
    "rsync error: some files could not be transferred (code 23)",
    "a lone summary is still said",
  );
  assertEquals(rsyncCause([]), null);
});

const peers = () =>
  missing([RSYNC !== null, "rsync"], [OPENRSYNC !== null, "openrsync"]) !== undefined;

Deno.test("an rsync failure quotes its cause, with all of stderr in .detail (the real programs)", async () => {
  if (peers()) return;
  const dir = await Deno.makeTempDir({ prefix: "ops-exec-cause-" });
  try {
    await Deno.mkdir(`${dir}/src`);
    await Deno.writeTextFile(`${dir}/src/a`, "a");
    const base = { host: "h", action: "sync.push" as const, localPath: `${dir}/src/` };
    // openrsync told to send --mkpath: the cause is its own first line, not its usage text.
    const unknown = await assertRejects(
      () =>
        runRsync({
          ...base,
          remotePath: `${dir}/dest/`,
          program: OPENRSYNC!,
          local: OPEN,
          remote: OPEN,
          mkpath: true,
        }, {}),
      TransportError,
    );
    assertEquals(unknown.kind, "sync_failed");
    assertStringIncludes(unknown.message, "unrecognized option '--mkpath'");
    assertFalse(unknown.message.includes("usage:"), unknown.message);
    assertStringIncludes(unknown.detail!, "usage: openrsync");
    // A remote login shell that prints: rsync 3.x says the shell is not clean.
    await Deno.writeTextFile(`${dir}/noisy.sh`, 'echo "Welcome to the box"\nshift\nexec "$@"\n');
    const noisy = await assertRejects(
      () =>
        runRsync({
          ...base,
          remotePath: `${dir}/dest/`,
          remotePrefix: "h:",
          program: RSYNC!,
          local: RSYNC3,
          remote: RSYNC3,
          remoteShell: `/bin/sh ${dir}/noisy.sh`,
        }, {}),
      TransportError,
    );
    assertStringIncludes(noisy.message, "is your shell clean?");
    assertStringIncludes(noisy.message, "prints something for non-interactive sessions");
    // This openrsync build fails --checksum as a sender; the message says to drop it.
    const checksum = await assertRejects(
      () =>
        runRsync({
          ...base,
          remotePath: `${dir}/dest/`,
          program: OPENRSYNC!,
          local: OPEN,
          remote: OPEN,
          rsyncPath: OPENRSYNC!,
        }, { checksum: true }),
      TransportError,
    );
    assertStringIncludes(checksum.message, "hash_file_by_path");
    assertStringIncludes(checksum.message, "drop checksum");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the real openrsync takes every option ops-exec builds for it", async () => {
  if (peers()) return;
  const dir = await Deno.makeTempDir({ prefix: "ops-exec-options-" });
  try {
    await Deno.mkdir(`${dir}/src/sub`, { recursive: true });
    await Deno.writeFile(`${dir}/src/sub/big`, new Uint8Array(300_000).fill(7));
    await Deno.writeTextFile(`${dir}/src/x.log`, "log");
    const progress: SyncProgress[] = [];
    const route = {
      host: "h",
      action: "sync.push" as const,
      localPath: `${dir}/src/`,
      remotePath: `${dir}/dest/a/b/`,
      program: OPENRSYNC!,
      local: OPEN,
      remote: OPEN,
      rsyncPath: OPENRSYNC!,
    };
    const result = await runRsync(route, {
      delete: true,
      exclude: ["*.log"],
      compress: true,
      onProgress: (p) => progress.push(p),
    });
    assertEquals(result.filesTransferred, 1);
    assertEquals(result.literalBytes, 300_000);
    assertEquals(progress.at(-1)?.percent, 100);
    assertEquals((await Deno.stat(`${dir}/dest/a/b/sub/big`)).size, 300_000);
    assertFalse(await Deno.stat(`${dir}/dest/a/b/x.log`).then(() => true, () => false));
    const dry = await runRsync(route, { dryRun: true, delete: true });
    assert(dry.dryRun);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
