// Runs a program as the controller of a fresh test network: builds the
// network (tests/hosts/_network.ts), runs the program inside the controller's
// namespace with OPS_EXEC_TESTNET naming the network's description, and tears
// everything down again, on success, on failure and on Ctrl-C (SIGINT or
// SIGTERM to this process). Used by `deno task test:hosts` (run.ts) and by
// the fan-out benchmark, so that neither ever sends a packet through the root
// namespace's network.

import { findProgram, isRoot } from "../_prereq.ts";
import { FLEET_PARENT, fleetPrerequisites } from "./_fleet.ts";
import { createNetwork, destroyNetwork, inNetns, type TestNetwork } from "./_network.ts";

/** What a test network with a fleet needs, as [met, what is missing] pairs for `missing()`. */
export function testNetworkPrerequisites(): [boolean, string][] {
  return [
    [isRoot(), "root (network namespaces)"],
    [findProgram("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip") !== null, "iproute2 (ip)"],
    [findProgram("/usr/sbin/sshd") !== null, "sshd (openssh-server)"],
    [findProgram("/usr/bin/rsync", "/usr/local/bin/rsync") !== null, "rsync"],
    ...fleetPrerequisites(),
  ];
}

/** Options of {@linkcode runInTestNetwork}. */
export interface RunInTestNetworkOptions {
  /** Progress messages. Default: console.log. */
  log?: (message: string) => void;
}

/**
 * Builds a test network with `hostNames`, runs `argv` as its controller and
 * removes the network (and whatever fleets left in it) whatever happens.
 *
 * @returns The program's exit code.
 */
export async function runInTestNetwork(
  hostNames: readonly string[],
  argv: readonly string[],
  opts: RunInTestNetworkOptions = {},
): Promise<number> {
  const log = opts.log ?? console.log;
  const net = await createNetwork(hostNames);
  let description: string | undefined;
  let child: Deno.ChildProcess | undefined;
  const stop = () => {
    try {
      child?.kill("SIGTERM");
    } catch {
      // Already gone.
    }
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
  try {
    description = await Deno.makeTempFile({ prefix: "ops-exec-testnet-", suffix: ".json" });
    await Deno.writeTextFile(description, JSON.stringify(net, null, 2));
    log(
      `test network ${net.id}: controller ${net.controller.addresses.join(", ")}; ` +
        net.hosts.map((h) => `${h.name} ${h.address}`).join(", "),
    );
    const prefix = inNetns(net.controller.netns);
    child = new Deno.Command(prefix[0], {
      args: [...prefix.slice(1), ...argv],
      env: { OPS_EXEC_TESTNET: description },
      stdin: "null",
    }).spawn();
    return (await child.status).code;
  } finally {
    await destroyNetwork(net);
    await sweepFleets(net);
    if (description) await Deno.remove(description).catch(() => {});
    Deno.removeSignalListener("SIGINT", stop);
    Deno.removeSignalListener("SIGTERM", stop);
  }
}

/**
 * Removes the files of fleets a killed controller could not remove itself
 * (their processes died with the network's namespaces).
 */
async function sweepFleets(net: TestNetwork): Promise<void> {
  try {
    for await (const entry of Deno.readDir(FLEET_PARENT)) {
      if (entry.isDirectory && entry.name.startsWith(`fleet-${net.id}-`)) {
        await Deno.remove(`${FLEET_PARENT}/${entry.name}`, { recursive: true }).catch(() => {});
      }
    }
  } catch {
    // No fleet was ever started.
  }
}
