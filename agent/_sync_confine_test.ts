import { assertEquals } from "@deps/assert";
import { CapabilitySet } from "../capability/capability_set.ts";
import { isDryRun, syncCommand, SyncRoots, type SyncSetup } from "./_sync_confine.ts";

Deno.test("SyncRoots: roots resolved at start; a narrower root (CapMap) is placed inside its configured root's resolution", async () => {
  const base = await Deno.realPath(await Deno.makeTempDir({ prefix: "ops-exec-roots-" }));
  try {
    await Deno.mkdir(`${base}/real/app`, { recursive: true });
    await Deno.symlink(`${base}/real`, `${base}/link`);
    await Deno.symlink(`${base}/elsewhere`, `${base}/real/app-link`);
    const ceiling = CapabilitySet.of(`sync.push:${base}/link`);
    const roots = await SyncRoots.resolve([ceiling]);
    assertEquals(roots.resolved(`${base}/link`), `${base}/real`);
    // Not in the config: placed lexically inside the configured root's resolution,
    // a symlink below that is not followed (it can only be narrower, never elsewhere).
    assertEquals(roots.resolved(`${base}/link/app`), `${base}/real/app`);
    assertEquals(roots.resolved(`${base}/link/app-link`), `${base}/real/app-link`);
    assertEquals(roots.resolved("/somewhere/else"), null);

    const narrow = CapabilitySet.of(`sync.push:${base}/link/app`);
    assertEquals(
      roots.confinementRoot(narrow, "sync.push", `${base}/real/app/x`),
      `${base}/real/app`,
    );
    assertEquals(roots.confinementRoot(narrow, "sync.push", `${base}/real/other`), null);
    assertEquals(roots.confinementRoot(narrow, "sync.pull", `${base}/real/app/x`), null);
    assertEquals(roots.confinementRoot(CapabilitySet.of("sync.*"), "sync.pull", "/etc"), "/");
    // Nested grants: the outermost root that holds the target.
    const nested = CapabilitySet.of(`sync.push:${base}/link`, `sync.push:${base}/link/app`);
    assertEquals(roots.confinementRoot(nested, "sync.push", `${base}/real/app/x`), `${base}/real`);
  } finally {
    await Deno.remove(base, { recursive: true });
  }
});

const setup = (confinement: "namespace" | "none", userNamespace = false): SyncSetup => ({
  confinement,
  userNamespace,
  program: "rsync",
  idleTimeoutS: 300,
  rsync: {
    version: "rsync 3.5.0",
    openrsync: false,
    safeLinks: true,
    confineRoot: true,
    dropDevices: true,
  },
});

Deno.test("syncCommand: the confinement, and rsync's own safeguards by direction", () => {
  const server = ["--server", "-logtpre.iLsfxCIvu", "--delete", "."];
  const push = { action: "sync.push" as const, root: "/srv/app", target: "/srv/app/x/" };
  const namespace = syncCommand(push, server, setup("namespace"));
  assertEquals(namespace.slice(0, 8), [
    "unshare",
    "--mount",
    "--pid",
    "--fork",
    "--propagation",
    "private",
    "--",
    "/bin/sh",
  ]);
  assertEquals(namespace.slice(10, 15), ["sh", "view", "push", "/srv/app", "/srv/app/x/"]);
  assertEquals(namespace.slice(15), [
    "rsync",
    "--server",
    "-logtpre.iLsfxCIvu",
    "--delete",
    "--timeout=300",
    "--safe-links",
    "--drop-D",
    "--confine-root=/srv/app",
    ".",
  ]);
  const user = syncCommand(push, server, setup("namespace", true));
  assertEquals(user.slice(0, 4), ["unshare", "--user", "--map-root-user", "--mount"]);
  assertEquals(user[user.indexOf("sh") + 1], "userview");
  const pinned = syncCommand({ ...push, dryRun: true }, server, setup("none"));
  assertEquals(pinned.slice(0, 2), ["/bin/sh", "-c"]);
  assertEquals(pinned.slice(3, 6), ["sh", "pin", "push-dry"]);

  const pull = syncCommand(
    { action: "sync.pull", root: "/srv/app", target: "/srv/app/x/" },
    ["--server", "--sender", "-logtpre.iLsfxCIvu", "."],
    setup("namespace"),
  );
  assertEquals(pull.slice(-4), [
    "-logtpre.iLsfxCIvu",
    "--timeout=300",
    "--confine-root=/srv/app",
    ".",
  ]);

  // An unlimited grant reaches every path anyway: rsync runs as such, on the resolved target.
  const unlimited = syncCommand({ ...push, root: "/" }, server, setup("namespace"));
  assertEquals(unlimited[0], "rsync");
  assertEquals(unlimited.at(-1), "/srv/app/x/");
  assertEquals(unlimited.includes("--confine-root=/"), false);
});

Deno.test("isDryRun: n among the short options, or --dry-run; never the capability letters", () => {
  assertEquals(isDryRun(["--server", "-nlogtpre.iLsfxCIvu", "."]), true);
  assertEquals(isDryRun(["--server", "-logtpre.iLsfxCIvu", "."]), false);
  assertEquals(isDryRun(["--server", "-g", "-n", "-r", "."]), true);
  assertEquals(isDryRun(["--server", "--sender", "-logtpre.in", "."]), false);
});
