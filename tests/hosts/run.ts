// `deno task test:hosts`: builds the mini tailnet (tests/hosts/_network.ts),
// runs the multi-host tests inside the controller's namespace, and tears
// everything down again, on success, on failure and on Ctrl-C
// (tests/hosts/_controller.ts).
//
// Needs root, iproute2, sshd, rsync and util-linux's nsenter/unshare. Without
// them it skips with a reason, except under CI=true, where a missing
// prerequisite is a failure.

import { missing } from "../_prereq.ts";
import { runInTestNetwork, testNetworkPrerequisites } from "./_controller.ts";

/** The hosts of the test network. */
export const HOST_NAMES = ["canary", "prod", "mac", "plain"] as const;

const skipped = missing(...testNetworkPrerequisites());
if (skipped) {
  console.log(`multi-host tests skipped: ${skipped}`);
  Deno.exit(0);
}

const dir = new URL(".", import.meta.url).pathname;
Deno.exit(
  await runInTestNetwork(HOST_NAMES, [Deno.execPath(), "test", "--allow-all", ...Deno.args, dir]),
);
