// A private syslog daemon for tests: Debian's rsyslogd, listening on a unix
// socket of its own (never /dev/log) and writing every message it receives to
// a file, one per line as "TAG: MESSAGE". The agent's audit copy reaches it
// through `logger --socket` (agent.audit_syslog_socket).

import { join } from "@deps/path";
import { findProgram, missing } from "./_prereq.ts";

/** rsyslogd, or `null`. */
export const RSYSLOGD: string | null = findProgram("/usr/sbin/rsyslogd");

/** The reason to skip, or `undefined` (throws under CI=true, as `missing` does). */
export function syslogMissing(): string | undefined {
  return missing([RSYSLOGD !== null, "rsyslogd (Debian package rsyslog)"], [
    findProgram("/usr/bin/logger") !== null,
    "logger (bsdutils)",
  ]);
}

/** A running private rsyslogd. */
export interface Syslog extends AsyncDisposable {
  /** The socket it listens on. */
  socket: string;
  /** The messages received so far, the tag stripped, for messages tagged `tag`. */
  messages(tag?: string): string[];
  /** Stops it and removes its files. */
  stop(): Promise<void>;
}

/** Starts rsyslogd on a socket in a new directory under /tmp/ops-agent. */
export async function startSyslog(): Promise<Syslog> {
  await Deno.mkdir("/tmp/ops-agent", { recursive: true });
  const dir = await Deno.makeTempDir({ dir: "/tmp/ops-agent", prefix: "syslog-" });
  await Deno.chmod(dir, 0o755);
  const socket = join(dir, "log");
  const file = join(dir, "messages");
  await Deno.writeTextFile(
    join(dir, "rsyslog.conf"),
    `global(workDirectory="${dir}" maxMessageSize="64k")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="${socket}" CreatePath="on")
template(name="raw" type="string" string="%syslogtag%%msg%\\n")
*.* action(type="omfile" file="${file}" template="raw")
`,
  );
  const child = new Deno.Command(RSYSLOGD!, {
    args: ["-n", "-f", join(dir, "rsyslog.conf"), "-i", join(dir, "pid")],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  const end = Date.now() + 10_000;
  for (;;) {
    try {
      if ((await Deno.stat(socket)).isSocket) break;
    } catch {
      // Not yet.
    }
    if (Date.now() > end) throw new Error("rsyslogd did not create its socket");
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  await Deno.chmod(socket, 0o666);
  let stopped: Promise<void> | undefined;
  const stop = () => {
    stopped ??= (async () => {
      try {
        child.kill("SIGTERM");
      } catch {
        // Gone.
      }
      await child.status;
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    })();
    return stopped;
  };
  return {
    socket,
    messages: (tag = "ops-agent:") => {
      let text = "";
      try {
        text = Deno.readTextFileSync(file);
      } catch {
        return [];
      }
      return text.split("\n").filter((line) => line.startsWith(tag)).map((line) =>
        line.slice(tag.length).trim()
      );
    },
    stop,
    [Symbol.asyncDispose]: stop,
  };
}
