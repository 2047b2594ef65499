// A mini tailnet of real hosts for the multi-host tests: one network
// namespace per host, all joined through a bridge in a "switch" namespace,
// with addresses in 100.64.0.0/10. The root namespace's network is never
// touched: the controller (the test process) lives in a namespace of its own.

/** One host of the test network. */
export interface TestHost {
  /** Short name, e.g. `canary`. */
  name: string;
  /** The network namespace the host lives in. */
  netns: string;
  /** Its address, e.g. `100.100.0.11`. */
  address: string;
  /** The switch-side interface of its link (cut it to cut the host off). */
  switchPort: string;
}

/** The whole test network, as written to the description file. */
export interface TestNetwork {
  /** A prefix unique to this run, used in every namespace name. */
  id: string;
  /** The namespace holding the bridge. */
  switchNetns: string;
  /** The controller's namespace (where the tests run). */
  controller: { netns: string; addresses: string[]; switchPort: string };
  /** The hosts. */
  hosts: TestHost[];
}

/** The subnet of the test network (inside the tailnet range 100.64.0.0/10). */
export const SUBNET = "100.100.0";

/** Runs `ip` with `args`; throws with ip's own words when it fails. */
export async function ip(...args: string[]): Promise<string> {
  const out = await new Deno.Command("ip", { args, stdin: "null" }).output();
  if (!out.success) {
    throw new Error(`ip ${args.join(" ")}: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
  return new TextDecoder().decode(out.stdout);
}

/**
 * Creates the switch, the controller (with `controllerAddresses` addresses,
 * so that tests can be several tailnet peers) and one namespace per host.
 * On any failure, whatever was created is removed again.
 */
export async function createNetwork(
  hostNames: readonly string[],
  opts: { controllerAddresses?: number } = {},
): Promise<TestNetwork> {
  const id = `opsx${(Date.now() % 100000).toString(36)}${
    Math.floor(Math.random() * 36 ** 2).toString(36)
  }`;
  const net: TestNetwork = {
    id,
    switchNetns: `${id}-sw`,
    controller: {
      netns: `${id}-ctl`,
      addresses: Array.from(
        { length: opts.controllerAddresses ?? 4 },
        (_, i) => `${SUBNET}.${2 + i}`,
      ),
      switchPort: `${id}c`,
    },
    hosts: hostNames.map((name, i) => ({
      name,
      netns: `${id}-${name}`,
      address: `${SUBNET}.${11 + i}`,
      switchPort: `${id}h${i}`,
    })),
  };
  try {
    await ip("netns", "add", net.switchNetns);
    await ip("-n", net.switchNetns, "link", "add", "br0", "type", "bridge");
    await ip("-n", net.switchNetns, "link", "set", "br0", "up");
    await ip("-n", net.switchNetns, "link", "set", "lo", "up");
    await attach(net, net.controller.netns, net.controller.switchPort, net.controller.addresses);
    for (const host of net.hosts) {
      await attach(net, host.netns, host.switchPort, [host.address]);
    }
  } catch (error) {
    await destroyNetwork(net);
    throw error;
  }
  return net;
}

async function attach(net: TestNetwork, netns: string, port: string, addresses: string[]) {
  await ip("netns", "add", netns);
  // Created directly inside the two namespaces: nothing appears in the root one.
  await ip(
    "link",
    "add",
    port,
    "netns",
    net.switchNetns,
    "type",
    "veth",
    "peer",
    "name",
    "eth0",
    "netns",
    netns,
  );
  await ip("-n", net.switchNetns, "link", "set", port, "master", "br0", "up");
  for (const address of addresses) {
    await ip("-n", netns, "addr", "add", `${address}/24`, "dev", "eth0");
  }
  await ip("-n", netns, "link", "set", "eth0", "up");
  await ip("-n", netns, "link", "set", "lo", "up");
}

/** Removes every namespace of the network (their links go with them). Never throws. */
export async function destroyNetwork(net: TestNetwork): Promise<void> {
  const all = [net.controller.netns, ...net.hosts.map((h) => h.netns), net.switchNetns];
  for (const netns of all) {
    await ip("netns", "pids", netns)
      .then((pids) => {
        for (const pid of pids.split("\n").filter(Boolean)) {
          try {
            Deno.kill(Number(pid), "SIGKILL");
          } catch { /* gone */ }
        }
      })
      .catch(() => {});
    await ip("netns", "del", netns).catch(() => {});
  }
}

/** Cuts (or restores) a host's link at the switch. */
export async function setLink(net: TestNetwork, host: TestHost, up: boolean): Promise<void> {
  await ip("-n", net.switchNetns, "link", "set", host.switchPort, up ? "up" : "down");
}

/** The argv prefix that runs a program inside `netns`. */
export function inNetns(netns: string): string[] {
  return ["ip", "netns", "exec", netns];
}
