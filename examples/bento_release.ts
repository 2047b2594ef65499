// Bento's shape on ops-exec: build -> sign -> notarize -> publish on a Mac,
// then pull the signed artifact back. Each phase is its own gated action
// (`bento.build`, `bento.sign`, `bento.notarize`, `bento.publish`), so a host
// whose ceiling lacks `bento.sign` refuses to sign whoever asks.
//
// The phase commands are parameters. The defaults are portable stand-ins
// (tar for xcodebuild, a SHA-256 for codesign, a ticket file for notarytool)
// so the flow runs on any POSIX host; a real Mac passes the real commands:
//
//   xcodebuild -scheme App -archivePath out/App.xcarchive archive
//   codesign --sign "Developer ID Application: ..." --options runtime out/App.app
//   xcrun notarytool submit out/App.zip --keychain-profile ci --wait && xcrun stapler staple out/App.app
//
// As a program:
//   deno run -A examples/bento_release.ts --source ./app --version 1.2.3 \
//     --mac http://100.77.1.9:7070 --builds /Users/ci/builds --out ./dist

import {
  CapabilitySet,
  ConsoleSink,
  type Executor,
  type LogSink,
  type RunOutput,
  Step,
  type SyncResult,
} from "../mod.ts";
import { AgentRpc } from "../transports/rpc.ts";
import { exampleArgs, usageError } from "./_args.ts";

/** The shell script of each phase, run in the build directory with `$VERSION` set. */
export interface BentoCommands {
  /** Builds `out/` from `src/`. */
  build: string;
  /** Signs what `build` produced. */
  sign: string;
  /** Notarizes (and staples) the signed artifact. */
  notarize: string;
  /** Publishes the artifact (copies it to `$PUBLISH_DIR`). */
  publish: string;
}

/** Portable stand-ins with the shape of the real Mac commands. */
export const STAND_IN_COMMANDS: BentoCommands = {
  build:
    'set -e; mkdir -p out; tar -C src -cf "out/App-$VERSION.tar" .; echo "built out/App-$VERSION.tar"',
  sign: 'set -e; cd out; if command -v sha256sum >/dev/null; then sha256sum "App-$VERSION.tar"; ' +
    'else shasum -a 256 "App-$VERSION.tar"; fi > "App-$VERSION.tar.sig"; echo "signed: $(cat "App-$VERSION.tar.sig")"',
  notarize: 'set -e; cd out; test -s "App-$VERSION.tar.sig"; ' +
    'printf \'{"status":"Accepted","version":"%s"}\\n\' "$VERSION" > "App-$VERSION.notarization.json"; echo "notarized"',
  publish:
    'set -e; mkdir -p "$PUBLISH_DIR"; cp out/* "$PUBLISH_DIR"/; echo "published to $PUBLISH_DIR"',
};

/** Options of {@linkcode release}. */
export interface ReleaseOptions {
  /** The local source directory. */
  source: string;
  /** The version being released. */
  version: string;
  /** The builds root on the Mac (granted as `sync.push:`/`sync.pull:`); the build runs in `<builds>/<version>`. */
  builds: string;
  /** Where `publish` puts the artifact on the Mac. Default `<builds>/published`. */
  publishDir?: string;
  /** Where the signed artifact is pulled back to, locally. */
  out: string;
  /** The phase commands. Default: {@linkcode STAND_IN_COMMANDS}. */
  commands?: BentoCommands;
  /** Where the Mac's lines go. Default: the console. */
  sink?: LogSink;
  /** Progress messages. Default: console.log. */
  log?: (message: string) => void;
}

/** What a release did. */
export interface ReleaseReport {
  /** Each phase that ran, with its output. */
  phases: { name: string; output: RunOutput }[];
  /** The push of the sources and the pull of the artifact. */
  transfers: SyncResult[];
  /** `true` when every phase succeeded and the artifact came back. */
  ok: boolean;
}

/**
 * Builds, signs, notarizes and publishes on `mac`, then pulls the artifact
 * back. Stops at the first phase that fails. A phase the caller's or the
 * Mac's grants refuse throws `CapabilityDenied`.
 */
export async function release(mac: Executor, opts: ReleaseOptions): Promise<ReleaseReport> {
  const log = opts.log ?? console.log;
  const commands = opts.commands ?? STAND_IN_COMMANDS;
  const workdir = `${opts.builds}/${opts.version}`;
  const env = { VERSION: opts.version, PUBLISH_DIR: opts.publishDir ?? `${opts.builds}/published` };
  const sink = opts.sink ?? new ConsoleSink({ host: mac.host });
  const report: ReleaseReport = { phases: [], transfers: [], ok: false };

  log(`pushing ${opts.source} to ${mac.host}:${workdir}/src`);
  report.transfers.push(await mac.push(`${opts.source}/`, `${workdir}/src/`, { delete: true }));

  for (const name of ["build", "sign", "notarize", "publish"] as const) {
    const step = Step.shell(`bento.${name}`, commands[name], {
      cwd: workdir,
      env,
      timeoutMs: 60 * 60_000,
      label: `${name} ${opts.version}`,
    });
    const output = await mac.runStreaming(step, sink);
    report.phases.push({ name, output });
    if (!output.success) {
      log(`${name} failed on ${mac.host}: exit ${output.exitCode}`);
      return report;
    }
  }

  log(`pulling ${mac.host}:${workdir}/out to ${opts.out}`);
  report.transfers.push(await mac.pull(`${workdir}/out/`, `${opts.out}/`));
  report.ok = true;
  return report;
}

const BENTO_USAGE =
  `Usage: bento_release.ts --source DIR --version V --mac URL [--builds DIR] [--out DIR]

Builds, signs, notarizes and publishes the source DIR on the Mac whose ops-agent
is at URL (each phase its own gated action, bento.build ... bento.publish), then
pulls the signed artifact back to --out.

Options:
  --source DIR    the local source directory
  --version V     the version being released
  --mac URL       the Mac's ops-agent, e.g. http://100.77.1.9:7070
  --builds DIR    the builds root on the Mac (default /Users/ci/builds)
  --out DIR       where the artifact is pulled to (default ./dist)
  -h, --help      this help

Example:
  deno run -A examples/bento_release.ts --source ./app --version 1.2.3 --mac http://100.77.1.9:7070`;

if (import.meta.main) {
  const values = exampleArgs("bento_release.ts", BENTO_USAGE, {
    source: { type: "string" },
    version: { type: "string" },
    mac: { type: "string" },
    builds: { type: "string", default: "/Users/ci/builds" },
    out: { type: "string", default: "./dist" },
  }) as { source?: string; version?: string; mac?: string; builds: string; out: string };
  if (!values.source || !values.version || !values.mac) {
    usageError("bento_release.ts", "--source, --version and --mac are required");
  }
  const caps = CapabilitySet.of(
    "bento.*",
    `sync.push:${values.builds}`,
    `sync.pull:${values.builds}`,
  );
  await using mac = new AgentRpc({ url: values.mac }, caps);
  const report = await release(mac, {
    source: values.source,
    version: values.version,
    builds: values.builds!,
    out: values.out!,
  });
  Deno.exit(report.ok ? 0 : 1);
}
