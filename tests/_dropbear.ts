// A private Dropbear server for tests (Debian's dropbear-bin), reached with
// the OpenSSH client: `dropbear -F -E -p 127.0.0.1:PORT -r KEY` with a host
// key of its own, a known_hosts for it, and a client key in the test
// account's ~/.ssh/authorized_keys (Dropbear reads no other file). Root only:
// Dropbear switches to the account, which tests/_accounts.ts creates.

import { ensureAccount, homeOf } from "./_accounts.ts";
import { findProgram, missing } from "./_prereq.ts";
import { freePort, SSH } from "./_sshd.ts";

/** The Dropbear server, or `null`. */
export const DROPBEAR: string | null = findProgram("/usr/sbin/dropbear");
const DROPBEARKEY = findProgram("/usr/bin/dropbearkey");
const SSH_KEYGEN = findProgram("/usr/bin/ssh-keygen");

/** The account Dropbear logs in (its own, so that its authorized_keys are ours alone). */
export const DROPBEAR_ACCOUNT = "opsx-dropbear";

/** The reason to skip Dropbear tests, or `undefined` (throws under CI=true instead). */
export function dropbearMissing(): string | undefined {
  return missing(
    [DROPBEAR !== null && DROPBEARKEY !== null, "dropbear (Debian package dropbear-bin)"],
    [SSH !== null && SSH_KEYGEN !== null, "ssh, ssh-keygen (openssh-client)"],
    [Deno.uid() === 0, "root (Dropbear switches to a test account)"],
  );
}

/** A running Dropbear and what a client needs to reach it. */
export interface Dropbear extends AsyncDisposable {
  /** The address it listens on. */
  host: string;
  /** Its port. */
  port: number;
  /** The account to log in as. */
  user: string;
  /** The client key the account accepts. */
  clientKey: string;
  /** A known_hosts file with Dropbear's host key. */
  knownHosts: string;
  /** How many public-key authentications Dropbear has accepted (from its log). */
  authentications(): number;
  /** What Dropbear logged so far. */
  log(): string;
  /** Stops Dropbear and every connection it serves; removes its files. */
  stop(): Promise<void>;
}

async function output(program: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(program, { args, stdin: "null", stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`${program} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
  return new TextDecoder().decode(out.stdout);
}

/** Starts Dropbear on a free loopback port; resolves once it accepts connections. */
export async function startDropbear(): Promise<Dropbear> {
  if (!DROPBEAR || !DROPBEARKEY || !SSH_KEYGEN) throw new Error("dropbear is not installed");
  const dir = await Deno.makeTempDir({ prefix: "ops-exec-dropbear-" });
  const hostKey = `${dir}/host_ed25519`;
  const clientKey = `${dir}/client_ed25519`;
  await output(DROPBEARKEY, ["-t", "ed25519", "-f", hostKey]);
  const publicHost = (await output(DROPBEARKEY, ["-y", "-f", hostKey]))
    .split("\n").find((line) => line.startsWith("ssh-ed25519 "))!;
  await output(SSH_KEYGEN, ["-q", "-t", "ed25519", "-N", "", "-C", "ops-exec", "-f", clientKey]);

  await ensureAccount({ name: DROPBEAR_ACCOUNT, shell: "/bin/sh" });
  const home = await homeOf(DROPBEAR_ACCOUNT);
  await Deno.mkdir(`${home}/.ssh`, { recursive: true, mode: 0o700 });
  await Deno.copyFile(`${clientKey}.pub`, `${home}/.ssh/authorized_keys`);
  await Deno.chmod(`${home}/.ssh`, 0o700);
  await Deno.chmod(`${home}/.ssh/authorized_keys`, 0o600);
  await output("chown", ["-R", `${DROPBEAR_ACCOUNT}:`, `${home}/.ssh`]);

  const port = freePort("127.0.0.1");
  const knownHosts = `${dir}/known_hosts`;
  await Deno.writeTextFile(
    knownHosts,
    `[127.0.0.1]:${port} ${publicHost.split(" ").slice(0, 2).join(" ")}\n`,
  );
  let log = "";
  const child = new Deno.Command(DROPBEAR, {
    args: [
      "-F",
      "-E",
      "-s",
      "-j",
      "-k",
      "-p",
      `127.0.0.1:${port}`,
      "-r",
      hostKey,
      "-P",
      `${dir}/pid`,
    ],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const reading = (async () => {
    const decoder = new TextDecoder();
    for await (const chunk of child.stderr) log += decoder.decode(chunk, { stream: true });
  })();
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      break;
    } catch (error) {
      if (Date.now() > deadline) {
        child.kill("SIGKILL");
        throw new Error(`dropbear did not listen: ${log}`, { cause: error });
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  let stopped: Promise<void> | null = null;
  const stop = () =>
    stopped ??= (async () => {
      // Each connection is a child of the listener: stop them with it.
      const children = await output("ps", ["-A", "-o", "pid=,ppid="]);
      for (const line of children.split("\n")) {
        const [pid, ppid] = line.trim().split(/\s+/).map(Number);
        if (ppid === child.pid) Deno.kill(pid, "SIGKILL");
      }
      child.kill("SIGTERM");
      await child.status;
      await reading;
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    })();
  return {
    host: "127.0.0.1",
    port,
    user: DROPBEAR_ACCOUNT,
    clientKey,
    knownHosts,
    authentications: () => log.split("\n").filter((l) => /Pubkey auth succeeded/.test(l)).length,
    log: () => log,
    stop,
    [Symbol.asyncDispose]: stop,
  };
}
