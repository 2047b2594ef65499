// Which rsync a side runs, read from `rsync --version`, and what that flavour
// speaks. Two families exist in the wild:
//
// - rsync (samba's; 3.x on Linux and from Homebrew, 2.6.9 on old macOS):
//   `rsync  version 3.2.7  protocol version 31` on stdout;
// - openrsync (the ISC-licensed re-implementation that macOS 15+ ships as
//   /usr/bin/rsync): `openrsync: protocol version 27` (on stderr), and in
//   Apple's fork a second line `rsync version 2.6.9 compatible` (on stdout).
//
// The differences that matter to ops-exec: openrsync rejects `--mkpath`,
// `--info=progress2` and `--blocking-io`; it hands its remote shell a
// non-blocking socket; the open-source one splits `-e` on white space only
// (Apple's honours quotes); its `--stats` lines read differently; and as a
// client it sends a `--server` vector of separate short options.

import { baseEnvironment } from "../executor/_env.ts";
import { runProcess } from "../executor/_spawn.ts";
import type { RsyncFlavour } from "./_agent_protocol.ts";

export type { RsyncFlavour };

/** What `PROGRAM --version` said. */
export interface VersionAnswer {
  /** The flavour, when the words were rsync's or openrsync's and it exited 0. */
  flavour: RsyncFlavour | null;
  /** Its stdout and stderr, one line each. */
  text: string;
  /** Its exit code (127 when it could not be started), `null` after a signal. */
  exitCode: number | null;
}

/** Runs `program --version` on this machine (at most 15 s) and reads the answer. */
export async function askRsyncVersion(program: string): Promise<VersionAnswer> {
  const lines: string[] = [];
  const result = await runProcess({
    argv: [program, "--version"],
    env: baseEnvironment(),
    killGraceMs: 500,
    timeoutMs: 15_000,
  }, { write: (line) => void lines.push(line.text) });
  const text = lines.join("\n");
  return {
    flavour: result.exitCode === 0 ? parseRsyncVersion(text) : null,
    text,
    exitCode: result.exitCode,
  };
}

/**
 * Reads `rsync --version` output (stdout and stderr together) into a
 * flavour, or `null` when it is neither rsync's nor openrsync's.
 */
export function parseRsyncVersion(text: string): RsyncFlavour | null {
  const open = /openrsync:?\s+protocol version (\d+)/.exec(text);
  if (open) {
    const apple = /rsync version ([\d.]+) compatible/.exec(text);
    return {
      kind: "openrsync",
      version: apple ? apple[1] : "",
      protocol: Number(open[1]),
      apple: apple !== null,
    };
  }
  const samba = /rsync\s+version\s+v?(\d+\.\d+(?:\.\d+)?)\S*\s+protocol version (\d+)/.exec(text);
  if (samba) {
    return { kind: "rsync", version: samba[1], protocol: Number(samba[2]), apple: false };
  }
  return null;
}

/** `rsync 3.2.7 (protocol 31)`, `openrsync (protocol 27)`, `Apple's openrsync (protocol 29)`. */
export function describeFlavour(flavour: RsyncFlavour): string {
  if (flavour.kind === "rsync") return `rsync ${flavour.version} (protocol ${flavour.protocol})`;
  return `${flavour.apple ? "Apple's " : ""}openrsync (protocol ${flavour.protocol})`;
}

/** Whether `version` (dotted) is at least `wanted`. */
function atLeast(version: string, wanted: readonly number[]): boolean {
  const parts = version.split(".").map(Number);
  for (let i = 0; i < wanted.length; i++) {
    const part = parts[i] ?? 0;
    if (part !== wanted[i]) return part > wanted[i];
  }
  return true;
}

/** Whether this rsync knows `--mkpath` (rsync 3.2.3 and later), as a client or as a receiver. */
export function hasMkpath(flavour: RsyncFlavour): boolean {
  return flavour.kind === "rsync" && atLeast(flavour.version, [3, 2, 3]);
}

/** Whether this rsync, as the client, reports whole-transfer progress (`--info=progress2`, rsync 3.1). */
export function hasProgress2(flavour: RsyncFlavour): boolean {
  return flavour.kind === "rsync" && atLeast(flavour.version, [3, 1, 0]);
}

/**
 * Whether this rsync, as the client, escapes the remote paths it hands its
 * remote shell (rsync 3.2.4 and later do; openrsync and older rsync pass
 * them as they are, for the remote login shell to split).
 */
export function protectsRemoteArgs(flavour: RsyncFlavour): boolean {
  return flavour.kind === "rsync" && atLeast(flavour.version, [3, 2, 4]);
}

/**
 * Whether this rsync splits its `-e`/`--rsh` command on white space only,
 * with no quoting (the open-source openrsync; Apple's fork and rsync honour
 * single and double quotes).
 */
export function splitsRshOnWhiteSpace(flavour: RsyncFlavour): boolean {
  return flavour.kind === "openrsync" && !flavour.apple;
}

/**
 * Whether this rsync, as the client, hands its remote shell a non-blocking
 * socket that `--blocking-io` cannot turn off (openrsync: it has no such
 * option). rsync 3.x takes `--blocking-io`.
 */
export function givesNonBlockingStdio(flavour: RsyncFlavour): boolean {
  return flavour.kind === "openrsync";
}

/**
 * Whether a receiver of this flavour creates a missing destination
 * directory with all its parents by itself (openrsync does, for a
 * directory destination: `mkpath` of its root).
 */
export function createsDestinationPath(flavour: RsyncFlavour): boolean {
  return flavour.kind === "openrsync";
}

/**
 * What an unknown rsync is taken for: the oldest rsync 3.x behaviour
 * (no `--mkpath`, no `--info=progress2`), which every current rsync speaks.
 */
export const BASELINE_RSYNC: RsyncFlavour = {
  kind: "rsync",
  version: "3.0.0",
  protocol: 30,
  apple: false,
};
