// A BusyBox-only userland for a private sshd: a mount namespace (private,
// gone with sshd) whose /usr/bin and /usr/sbin hold nothing but busybox and
// its applet links (Debian's merged /usr makes /bin and /sbin the same), and
// /usr/local/bin and /usr/local/sbin empty. No perl, no coreutils, no
// util-linux: /bin/sh is busybox ash, setsid, df and uname are busybox's.
// Only sshd itself is put back, as a copy, so that it can re-exec itself.

import { BUSYBOX } from "./_shells.ts";
import { SSHD } from "./_sshd.ts";

/** The prepared userland. */
export interface BusyboxUserland {
  /** The sshd command prefix that enters it (for `startSshd({ commandPrefix })`). */
  commandPrefix: string[];
  /** Removes its directories (after sshd stopped). */
  remove(): Promise<void>;
  /** The same, synchronously (for an unload handler). */
  removeSync(): void;
}

/** Builds the userland's directories; root only (sshd enters it with `unshare --mount`). */
export async function busyboxUserland(): Promise<BusyboxUserland> {
  if (!BUSYBOX || !SSHD) throw new Error("busybox and sshd are needed");
  const root = await Deno.makeTempDir({ prefix: "ops-exec-busybox-" });
  await Deno.chmod(root, 0o755);
  const bin = `${root}/bin`;
  const sbin = `${root}/sbin`;
  const empty = `${root}/empty`;
  for (const dir of [bin, sbin, empty]) await Deno.mkdir(dir, { mode: 0o755 });
  await Deno.copyFile(BUSYBOX, `${bin}/busybox`);
  await Deno.chmod(`${bin}/busybox`, 0o755);
  const list = await new Deno.Command(BUSYBOX, { args: ["--list"], stdout: "piped" }).output();
  for (const applet of new TextDecoder().decode(list.stdout).split("\n").filter(Boolean)) {
    if (applet === "busybox") continue;
    await Deno.symlink("/usr/bin/busybox", `${bin}/${applet}`);
    await Deno.symlink("/usr/bin/busybox", `${sbin}/${applet}`);
  }
  await Deno.copyFile(SSHD, `${sbin}/${SSHD.slice(SSHD.lastIndexOf("/") + 1)}`);
  await Deno.chmod(`${sbin}/${SSHD.slice(SSHD.lastIndexOf("/") + 1)}`, 0o755);
  const enter = [
    `mount --bind ${bin} /usr/bin`,
    `mount --bind ${sbin} /usr/sbin`,
    `mount --bind ${empty} /usr/local/bin`,
    `mount --bind ${empty} /usr/local/sbin`,
    'exec "$@"',
  ].join(" && ");
  return {
    commandPrefix: [
      "unshare",
      "--mount",
      "--propagation",
      "private",
      "--",
      "/bin/sh",
      "-c",
      enter,
      "sh",
    ],
    remove: () => Deno.remove(root, { recursive: true }).catch(() => {}),
    removeSync: () => {
      try {
        Deno.removeSync(root, { recursive: true });
      } catch {
        // Already removed.
      }
    },
  };
}
