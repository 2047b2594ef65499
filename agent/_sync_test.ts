// The /v1/sync allowlist against the vectors the real programs send: rsync
// 3.x and openrsync, as ops-exec's own push/pull run them (rsyncArgv), each
// SyncOpts flag on its own and all together, captured by a remote shell that
// records its arguments. Every accepted vector is then tried with each
// forbidden option added in every position, and must be refused.

import { assert, assertEquals, assertThrows } from "@deps/assert";
import type { SyncOpts } from "../executor/types.ts";
import { askRsyncVersion } from "../transports/_rsync_flavour.ts";
import { captureServerVector, OPENRSYNC } from "../tests/_openrsync.ts";
import { missing, RSYNC } from "../tests/_prereq.ts";
import { parseSyncRequest, RsyncArgvError } from "./_sync.ts";

const DEST = "/srv/app/dest/";

const COMBINATIONS: Record<string, SyncOpts> = {
  plain: {},
  delete: { delete: true },
  exclude: { exclude: ["*.log", "cache/"] },
  dryRun: { dryRun: true },
  checksum: { checksum: true },
  compress: { compress: true },
  progress: { onProgress: () => {} },
  all: {
    delete: true,
    exclude: ["*.log"],
    dryRun: true,
    checksum: true,
    compress: true,
    onProgress: () => {},
  },
};

interface Genuine {
  name: string;
  action: "sync.push" | "sync.pull";
  argv: string[];
}

const skip = () =>
  missing(
    [RSYNC !== null, "rsync"],
    [OPENRSYNC !== null, "openrsync (../shared/peers/openrsync or $OPENRSYNC)"],
  ) !== undefined;

/** Every vector both programs send for every combination, both ways. */
async function genuineVectors(): Promise<Genuine[]> {
  const out: Genuine[] = [];
  for (const program of [RSYNC!, OPENRSYNC!]) {
    const local = (await askRsyncVersion(program)).flavour;
    assert(local, `${program} --version`);
    for (const action of ["sync.push", "sync.pull"] as const) {
      for (const [combo, opts] of Object.entries(COMBINATIONS)) {
        const argv = await captureServerVector(program, local, action, opts, DEST);
        out.push({ name: `${local.kind} ${action} ${combo}`, action, argv });
        // ops-exec's tunnel adds --mkpath for a receiver that knows it.
        if (local.kind === "openrsync" && action === "sync.push") {
          const withMkpath = [...argv];
          withMkpath.splice(withMkpath.length - 2, 0, "--mkpath");
          out.push({ name: `${local.kind} ${action} ${combo} +mkpath`, action, argv: withMkpath });
        }
      }
    }
  }
  return out;
}

Deno.test("the vectors rsync 3.x and openrsync really send are accepted, in their own shapes", async () => {
  if (skip()) return;
  const vectors = await genuineVectors();
  const shapes = new Set<string>();
  for (const { name, action, argv } of vectors) {
    const request = parseSyncRequest(JSON.stringify(argv));
    assertEquals(request.action, action, name);
    assertEquals(request.path, "/srv/app/dest", name);
    assert(request.trailingSlash, name);
    assertEquals(request.argv, argv.slice(1, -1), `${name}: the vector runs as sent`);
    shapes.add(argv.slice(2, -2).join(" "));
  }
  // openrsync's shape, as its issue describes it: one short option per word.
  const open = vectors.find((v) => v.name === "openrsync sync.push all")!.argv;
  assertEquals(open, [
    "rsync",
    "--server",
    "--delete-before",
    "-c",
    "-g",
    "-l",
    "-n",
    "-o",
    "-p",
    "-r",
    "-t",
    "-v",
    "-z",
    ".",
    DEST,
  ]);
  const pull = vectors.find((v) => v.name === "openrsync sync.pull delete")!.argv;
  assertEquals(pull.slice(0, 4), ["rsync", "--server", "--sender", "--delete-before"]);
  assert(shapes.size > 10, "the combinations give distinct vectors");
});

/** Options that run a program, name a file or directory, follow links, or hide options. */
const FORBIDDEN: string[][] = [
  // program-running
  ["--rsh=sh -c id"],
  ["--rsh", "sh"],
  ["-e", "sh -c id"],
  ["-esh"],
  ["--rsync-path=sh -c id"],
  ["--rsync-path", "/bin/sh"],
  ["--daemon"],
  ["--config=/etc/rsyncd.conf"],
  ["--server"],
  // file-naming
  ["--files-from=/etc/passwd"],
  ["--files-from", "/etc/passwd"],
  ["--exclude-from=/etc/shadow"],
  ["--include-from=/etc/shadow"],
  ["--filter=merge /etc/rules"],
  ["-f", "merge /etc/rules"],
  ["--backup-dir=/etc"],
  ["--backup-dir", "/etc"],
  ["--temp-dir=/tmp"],
  ["-T", "/tmp"],
  ["--partial-dir=/etc"],
  ["--log-file=/etc/cron.d/x"],
  ["--log-file", "/etc/cron.d/x"],
  ["--compare-dest=/etc"],
  ["--link-dest=/etc"],
  ["--copy-dest=/etc"],
  ["--write-batch=/tmp/b"],
  ["--read-batch=/tmp/b"],
  ["--only-write-batch=/tmp/b"],
  ["--password-file=/etc/shadow"],
  // link-following
  ["-L"],
  ["-k"],
  ["-K"],
  ["--copy-links"],
  ["--copy-dirlinks"],
  ["--keep-dirlinks"],
  ["--copy-unsafe-links"],
  // options that move the options past this check, or reach elsewhere
  ["-s"],
  ["--protect-args"],
  ["--secluded-args"],
  ["-R"],
  ["--relative"],
  ["-b"],
  ["--backup"],
  ["--remove-source-files"],
  ["--chmod=u+s"],
  // grouped letters with a forbidden one, both ends
  ["-gL"],
  ["-Lg"],
  ["-logDtpLre.iLsfxCIvu"],
  ["-slogDtpre.iLsfxCIvu"],
];

function assertRefused(argv: string[], name: string) {
  try {
    parseSyncRequest(JSON.stringify(argv));
  } catch (error) {
    assert(error instanceof RsyncArgvError, `${name}: ${error}`);
    return;
  }
  throw new Error(`${name}: accepted ${JSON.stringify(argv)}`);
}

Deno.test("each genuine vector with a forbidden option added, in every position, is refused", async () => {
  if (skip()) return;
  let tried = 0;
  for (const { name, argv } of await genuineVectors()) {
    for (const forbidden of FORBIDDEN) {
      // After "rsync" and "--server", up to and after the path.
      for (let at = 2; at <= argv.length; at++) {
        const hostile = [...argv.slice(0, at), ...forbidden, ...argv.slice(at)];
        assertRefused(hostile, name);
        tried++;
      }
      // In place of the "." and of the path.
      for (const at of [argv.length - 2, argv.length - 1]) {
        const hostile = [...argv.slice(0, at), ...forbidden, ...argv.slice(at + 1)];
        assertRefused(hostile, name);
        tried++;
      }
    }
  }
  assert(tried > 10_000, `${tried} hostile vectors`);
});

Deno.test("openrsync-shaped vectors: each option once, one per word, --mkpath for receivers only", () => {
  const base = ["rsync", "--server", "-g", "-l", "-o", "-p", "-r", "-t"];
  const ok = (words: string[]) => parseSyncRequest(JSON.stringify([...words, ".", DEST]));
  const refused = (words: string[], message: string) =>
    assertThrows(() => ok(words), RsyncArgvError, message);
  assertEquals(ok(base).action, "sync.push");
  assertEquals(ok(["rsync", "--server", "--sender", ...base.slice(2)]).action, "sync.pull");
  assertEquals(ok([...base, "--mkpath"]).argv.at(-2), "--mkpath");
  refused(["rsync", "--server", "--sender", ...base.slice(2), "--mkpath"], "receiver's option");
  refused([...base, "-g"], "given twice");
  refused(["rsync", "--server", "-gl", "-o"], "one option per word");
  refused(["rsync", "--server", "-gL"], "-L");
  refused([...base, "--delete-after"], "--delete-after");
  refused([...base, "--stats"], "--stats");
  // Device files and fifos (openrsync's -a sends -D; ops-exec's -rlptgo does not).
  refused([...base, "-D"], "-D");
  refused([...base, "--devices"], "--devices");
  refused([...base, "--specials"], "--specials");
});
