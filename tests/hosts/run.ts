// `deno task test:hosts`: builds the mini tailnet (tests/hosts/_network.ts),
// runs the multi-host tests inside the controller's namespace, and tears
// everything down again, on success, on failure and on Ctrl-C.
//
// Needs root, iproute2, sshd and rsync. Without them it skips with a reason,
// except under CI=true, where a missing prerequisite is a failure.

import { findProgram, isRoot, missing } from "../_prereq.ts";
import { createNetwork, destroyNetwork, inNetns } from "./_network.ts";

/** The hosts of the test network. */
export const HOST_NAMES = ["canary", "prod", "mac", "plain"] as const;

const skipped = missing(
  [isRoot(), "root (network namespaces)"],
  [findProgram("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip") !== null, "iproute2 (ip)"],
  [findProgram("/usr/sbin/sshd") !== null, "sshd (openssh-server)"],
  [findProgram("/usr/bin/rsync", "/usr/local/bin/rsync") !== null, "rsync"],
);
if (skipped) {
  console.log(`multi-host tests skipped: ${skipped}`);
  Deno.exit(0);
}

const net = await createNetwork(HOST_NAMES);
const description = await Deno.makeTempFile({ prefix: "ops-exec-testnet-", suffix: ".json" });
await Deno.writeTextFile(description, JSON.stringify(net, null, 2));
console.log(
  `test network ${net.id}: controller ${net.controller.addresses.join(", ")}; ` +
    net.hosts.map((h) => `${h.name} ${h.address}`).join(", "),
);

let child: Deno.ChildProcess | undefined;
const stop = () => {
  try {
    child?.kill("SIGTERM");
  } catch { /* already gone */ }
};
Deno.addSignalListener("SIGINT", stop);
Deno.addSignalListener("SIGTERM", stop);

let code = 1;
try {
  const dir = new URL(".", import.meta.url).pathname;
  child = new Deno.Command(inNetns(net.controller.netns)[0], {
    args: [
      ...inNetns(net.controller.netns).slice(1),
      Deno.execPath(),
      "test",
      "--allow-all",
      ...Deno.args,
      dir,
    ],
    env: { OPS_EXEC_TESTNET: description },
    stdin: "null",
  }).spawn();
  code = (await child.status).code;
} finally {
  await destroyNetwork(net);
  await Deno.remove(description).catch(() => {});
  Deno.removeSignalListener("SIGINT", stop);
  Deno.removeSignalListener("SIGTERM", stop);
}
Deno.exit(code);
