// The fleet: every host of the test network (tests/hosts/_network.ts) made a
// real host. Each runs its own sshd (tests/_sshd.ts, on its address, port 22)
// and its own ops-agent (the real program under -P=agent, as `deno task
// agent` runs it, on its address, port 7070), both inside the host's network
// namespace and inside a mount and UTS namespace of its own: network
// namespaces do not isolate the filesystem, so each host gets its own /srv
// (a tmpfs with /srv/app and /srv/builds), its own /run (where its "own
// tailscaled" socket is), and its own hostname. sshd and the agent of one host
// share these, so SshExec and AgentRpc see the same files.
//
// One tailscaled stand-in (tests/_tailscale_standin.ts) answers whois for
// every host from ONE map of the mini tailnet: each host reaches it at the
// standard /var/run/tailscale/tailscaled.sock of its own /run (the "mac" host
// through the `tailscale` CLI instead, as on macOS). The controller (the test
// process) is four peers, one per address:
//
//   100.100.0.2  sando     a tagged node, tag:sando       (tagged-node.json)
//   100.100.0.3  alice     user alice@example.com         (user-node.json)
//   100.100.0.4  bob       group:release, CapMap grants   (capmap-grant.json)
//   100.100.0.5  stranger  unknown to whois
//
// Everything is removed by close() (and, synchronously, on unload); the
// runner (tests/hosts/run.ts) sweeps what a killed test process leaves.

import { join } from "@deps/path";
import { CapabilitySet, SshExec } from "../../mod.ts";
import { AgentRpc, type AgentRpcOptions } from "../../transports/rpc.ts";
import { type AgentProcess, startAgentProcess } from "../_agent_process.ts";
import { findProgram, IN_CI } from "../_prereq.ts";
import { type Sshd, startSshd } from "../_sshd.ts";
import { TailnetStandin, whoisText } from "../_tailscale_standin.ts";
import type { TestHost, TestNetwork } from "./_network.ts";
import { testNetwork } from "./_testnet.ts";

/** The port every agent listens on. */
export const AGENT_PORT = 7070;
/** The CapMap key the agents read grants from. */
export const CAPMAP = "makenot.work/cap/ops-exec";
/** Sando's application root on the canary and prod hosts. */
export const APP_ROOT = "/srv/app";
/** Bento's builds root on the "mac" host (stands in for /Users/ci/builds). */
export const BUILDS_ROOT = "/srv/builds";
/** Where a host's agent finds its tailscaled (inside the host's own /run). */
export const HOST_TAILSCALED_SOCKET = "/var/run/tailscale/tailscaled.sock";
/** Where every fleet keeps its files (inside the agent permission set's /tmp/ops-agent). */
export const FLEET_PARENT = "/tmp/ops-agent";

/** The controller's identities, one per controller address, in order. */
export const PEER_NAMES = ["sando", "alice", "bob", "stranger"] as const;
/** A controller identity. */
export type PeerName = typeof PEER_NAMES[number];

/** A grant of an agent's config. */
export interface HostGrant {
  /** Selectors (`user:`, `group:`, `tag:`, ...). */
  to: string[];
  /** Grant strings. */
  allow: string[];
}

/** What a host allows: its agent's ceiling and grants, and how it asks whois. */
export interface HostPolicy {
  /** `[ceiling] allow`. */
  ceiling: string[];
  /** The `[[grant]]`s. */
  grants: HostGrant[];
  /** `socket`: tailscaled's LocalAPI; `cli`: `tailscale whois --json` (macOS style). */
  whois: "socket" | "cli";
}

const ALICE_FLEET: HostGrant = { to: ["user:alice@example.com"], allow: ["fleet.*", "observe"] };

/**
 * The hosts' policies. `fleet.*` steps are what alice (a person) may run
 * everywhere; Sando (tag:sando) promotes canary and prod; Bento (group:release)
 * releases on the mac. The "plain" host's ceiling lacks `bento.sign`, although
 * its grants (and bob's CapMap) give it to group:release.
 */
export const HOST_POLICIES: Readonly<Record<string, HostPolicy>> = {
  canary: sandoTier(),
  prod: sandoTier(),
  mac: {
    ceiling: [
      "bento.*",
      "fleet.*",
      "observe",
      `sync.push:${BUILDS_ROOT}`,
      `sync.pull:${BUILDS_ROOT}`,
    ],
    grants: [
      {
        to: ["group:release"],
        allow: ["bento.*", "observe", `sync.push:${BUILDS_ROOT}`, `sync.pull:${BUILDS_ROOT}`],
      },
      ALICE_FLEET,
    ],
    whois: "cli",
  },
  plain: {
    ceiling: ["bento.build", "fleet.*", "observe"],
    grants: [{ to: ["group:release"], allow: ["bento.*"] }, ALICE_FLEET],
    whois: "socket",
  },
};

function sandoTier(): HostPolicy {
  return {
    ceiling: ["sando.*", "fleet.*", "observe", `sync.push:${APP_ROOT}`],
    grants: [
      { to: ["tag:sando"], allow: ["sando.*", "observe", `sync.push:${APP_ROOT}`] },
      ALICE_FLEET,
    ],
    whois: "socket",
  };
}

/** The agent config of `host` under `policy` (`{dir}` is filled in by startAgentProcess). */
export function agentConfig(host: TestHost, policy: HostPolicy): string {
  const identity = policy.whois === "cli"
    ? `cli = "tailscale"`
    : `socket = "${HOST_TAILSCALED_SOCKET}"`;
  const grants = policy.grants.map((g) =>
    `[[grant]]\nto = ${JSON.stringify(g.to)}\nallow = ${JSON.stringify(g.allow)}\n`
  );
  return `# ${host.name} (${host.address}), written by tests/hosts/_fleet.ts
[agent]
listen = "${host.address}:${AGENT_PORT}"
audit_log = "{dir}/audit.jsonl"

[identity]
provider = "tailscale"
${identity}
capmap = "${CAPMAP}"

[ceiling]
allow = ${JSON.stringify(policy.ceiling)}

${grants.join("\n")}`;
}

/** The controller's peers: identity name -> the controller address that is it. */
export function peerAddresses(net: TestNetwork): Record<PeerName, string> {
  if (net.controller.addresses.length < PEER_NAMES.length) {
    throw new Error(
      `the fleet needs ${PEER_NAMES.length} controller addresses, the network has ${net.controller.addresses.length}`,
    );
  }
  return Object.fromEntries(
    PEER_NAMES.map((name, i) => [name, net.controller.addresses[i]]),
  ) as Record<PeerName, string>;
}

/** The whois document of a controller peer, or `undefined` for the stranger. */
export function peerWhois(name: PeerName, address: string): string | undefined {
  const addresses = [`${address}/32`];
  switch (name) {
    case "sando":
      return whoisText("tagged-node", { addresses });
    case "alice":
      return whoisText("user-node", { addresses });
    case "bob":
      return whoisText("capmap-grant", { addresses });
    case "stranger":
      return undefined;
  }
}

/** One host of the fleet. */
export interface FleetHost {
  /** Its name (`canary`, ...), also its hostname inside. */
  readonly name: string;
  /** Its tailnet address. */
  readonly address: string;
  /** The host as the network knows it (namespace, switch port). */
  readonly net: TestHost;
  /** Its agent's URL. */
  readonly url: string;
  /** Its sshd. */
  readonly sshd: Sshd;
  /** Its agent process (replaced by {@linkcode Fleet.restartAgent}). */
  agent: AgentProcess;
  /** The argv prefix that runs a program on this host (its net, mount and UTS namespaces). */
  readonly prefix: string[];
}

/** What {@linkcode Fleet.inHost} returns. */
export interface HostCommandResult {
  /** The exit code. */
  code: number;
  /** stdout, decoded. */
  stdout: string;
  /** stderr, decoded. */
  stderr: string;
}

const NSENTER = findProgram("/usr/bin/nsenter", "/bin/nsenter");
const UNSHARE = findProgram("/usr/bin/unshare", "/bin/unshare");
const SLEEP = findProgram("/usr/bin/sleep", "/bin/sleep");

/** What the fleet needs beyond the network's own prerequisites, as [met, what] pairs. */
export function fleetPrerequisites(): [boolean, string][] {
  return [
    [NSENTER !== null && UNSHARE !== null, "nsenter and unshare (util-linux)"],
    [SLEEP !== null, "sleep (coreutils)"],
  ];
}

/**
 * The running fleet. Start it with {@linkcode Fleet.start} inside the
 * controller's namespace (tests/hosts/run.ts puts the tests there); use
 * `await using`.
 */
export class Fleet implements AsyncDisposable {
  /** The network the fleet runs on. */
  readonly net: TestNetwork;
  /** The one tailscaled stand-in (its map is the tailnet). */
  readonly tailnet: TailnetStandin;
  /** The controller's identities and their addresses. */
  readonly peers: Readonly<Record<PeerName, string>>;
  /** The hosts, by name. */
  readonly hosts: ReadonlyMap<string, FleetHost>;
  /** The fleet's directory (agent dirs, sshd state, namespace files). */
  readonly dir: string;
  readonly #executors = new Set<{ close(): Promise<void> }>();
  readonly #setup: Setup;
  readonly #unload: () => void;
  #closed: Promise<void> | undefined;

  private constructor(net: TestNetwork, setup: Setup, hosts: Map<string, FleetHost>) {
    this.net = net;
    this.tailnet = setup.tailnet!;
    this.peers = peerAddresses(net);
    this.hosts = hosts;
    this.dir = setup.dir;
    this.#setup = setup;
    this.#unload = () => this.#closeSync();
    globalThis.addEventListener("unload", this.#unload);
  }

  /**
   * Makes every host of `net` (or those named in `opts.hosts`) a real host.
   * Resolves once every sshd and agent listens. On failure, removes whatever
   * it started and throws.
   */
  static async start(net: TestNetwork, opts: { hosts?: string[] } = {}): Promise<Fleet> {
    const missing = fleetPrerequisites().filter(([met]) => !met).map(([, what]) => what);
    if (missing.length) throw new Error(`the fleet needs ${missing.join(", ")}`);
    const chosen = net.hosts.filter((h) => !opts.hosts || opts.hosts.includes(h.name));
    for (const host of chosen) {
      if (!HOST_POLICIES[host.name]) throw new Error(`no policy for host "${host.name}"`);
    }
    const peers = peerAddresses(net);
    const dir = await Deno.makeTempDir({ dir: FLEET_PARENT, prefix: `fleet-${net.id}-` });
    await Deno.chmod(dir, 0o755); // sshd's state dirs below must be traversable
    const setup = new Setup(dir);
    try {
      for (const host of chosen) {
        for (const sub of ["tailscale", "agent", "sshd"]) {
          await Deno.mkdir(join(dir, host.name, sub), { recursive: true, mode: 0o755 });
        }
      }
      const sockets = chosen.filter((h) => HOST_POLICIES[h.name].whois === "socket")
        .map((h) => join(dir, h.name, "tailscale", "tailscaled.sock"));
      setup.tailnet = await TailnetStandin.start({ sockets, parent: dir });
      for (const name of PEER_NAMES) {
        const doc = peerWhois(name, peers[name]);
        if (doc) setup.tailnet.set(peers[name], doc);
      }
      for (const host of net.hosts) setup.tailnet.set(host.address, hostWhois(host));

      for (const host of chosen) setup.prefixes.set(host.name, await setup.hostNamespaces(host));

      // The first sshd may create the login account: start it alone.
      const sshds = new Map<string, Sshd>();
      for (const [i, host] of chosen.entries()) {
        const start = () =>
          startSshd({
            listenAddress: host.address,
            port: 22,
            stateDir: join(dir, host.name, "sshd"),
            commandPrefix: setup.prefixes.get(host.name),
          }).then((sshd) => {
            sshds.set(host.name, sshd);
            setup.sshds.push(sshd);
          });
        if (i === 0) await start();
        else setup.pending.push(start());
      }
      const agents = new Map<string, AgentProcess>();
      for (const host of chosen) {
        setup.pending.push(
          startHostAgent(
            host,
            join(dir, host.name, "agent"),
            setup.prefixes.get(host.name)!,
            setup.tailnet,
          )
            .then((agent) => {
              agents.set(host.name, agent);
              setup.agents.push(agent);
            }),
        );
      }
      await setup.settle();

      const hosts = new Map<string, FleetHost>();
      for (const host of chosen) {
        hosts.set(host.name, {
          name: host.name,
          address: host.address,
          net: host,
          url: `http://${host.address}:${AGENT_PORT}`,
          sshd: sshds.get(host.name)!,
          agent: agents.get(host.name)!,
          prefix: setup.prefixes.get(host.name)!,
        });
      }
      return new Fleet(net, setup, hosts);
    } catch (error) {
      await setup.undo();
      throw error;
    }
  }

  /** The host named `name`. */
  host(name: string): FleetHost {
    const host = this.hosts.get(name);
    if (!host) throw new Error(`the fleet has no host "${name}"`);
    return host;
  }

  /**
   * An AgentRpc to `host`'s agent, connecting from the controller address of
   * `as`, scoped caller-side to `caps`. Closed with the fleet.
   */
  rpc(
    host: string,
    as: PeerName,
    caps: CapabilitySet,
    opts: Partial<AgentRpcOptions> = {},
  ): AgentRpc {
    const target = this.host(host);
    const rpc = new AgentRpc(
      { url: target.url, localAddress: this.peers[as], host: target.name, ...opts },
      caps,
    );
    this.#executors.add(rpc);
    return rpc;
  }

  /** An SshExec to `host`'s sshd (its own keys and known_hosts). Closed with the fleet. */
  ssh(host: string, caps: CapabilitySet): SshExec {
    const target = this.host(host);
    const exec = new SshExec({
      host: target.address,
      port: target.sshd.port,
      user: target.sshd.user,
      identityFile: target.sshd.clientKey,
      knownHostsFile: target.sshd.knownHosts,
    }, caps);
    this.#executors.add(exec);
    return exec;
  }

  /**
   * Runs `sh -c script` on `host` directly (in its namespaces, as root), for
   * set-up and checks that must not depend on the transports under test.
   */
  async inHost(host: string, script: string): Promise<HostCommandResult> {
    const prefix = this.host(host).prefix;
    const out = await new Deno.Command(prefix[0], {
      args: [...prefix.slice(1), "/bin/sh", "-c", script],
      stdin: "null",
    }).output();
    const text = new TextDecoder();
    return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
  }

  /** Kills `host`'s agent (SIGKILL by default: no goodbye to its clients). */
  async killAgent(host: string, signal: Deno.Signal = "SIGKILL"): Promise<void> {
    await this.host(host).agent.stop(signal);
  }

  /** Starts `host`'s agent again (same config, same audit log), after {@linkcode killAgent}. */
  async restartAgent(host: string): Promise<void> {
    const target = this.host(host);
    await target.agent.stop("SIGKILL");
    target.agent = await startHostAgent(
      target.net,
      target.agent.dir,
      target.prefix,
      this.tailnet,
    );
  }

  /** Stops everything and removes the fleet's files. Idempotent. */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      globalThis.removeEventListener("unload", this.#unload);
      await Promise.allSettled([...this.#executors].map((e) => e.close()));
      // Restarted agents replaced the ones Setup knows.
      this.#setup.agents.splice(0, Infinity, ...[...this.hosts.values()].map((h) => h.agent));
      await this.#setup.undo();
    })();
    return this.#closed;
  }

  /** Same as {@linkcode Fleet.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /** The last resort when the test run ends without close(): synchronous. */
  #closeSync(): void {
    for (const host of this.hosts.values()) {
      killQuietly(host.agent.pid);
      killQuietly(host.sshd.pid);
      killNetnsSync(host.net.netns);
    }
    for (const holder of this.#setup.holders) killQuietly(holder.pid);
    try {
      Deno.removeSync(this.dir, { recursive: true });
    } catch {
      // Already gone.
    }
  }
}

/** What Fleet.start has built so far, so that a failure (or close) can undo it. */
class Setup {
  readonly dir: string;
  tailnet: TailnetStandin | undefined;
  readonly prefixes = new Map<string, string[]>();
  readonly sshds: Sshd[] = [];
  readonly agents: AgentProcess[] = [];
  readonly pending: Promise<void>[] = [];
  readonly holders: Deno.ChildProcess[] = [];
  netnses: string[] = [];

  constructor(dir: string) {
    this.dir = dir;
  }

  /**
   * A mount and UTS namespace for `host`, inside its network namespace, held
   * by a sleeping process (its namespaces live as long as it does): a tmpfs
   * on /srv (with the Sando and Bento roots), a tmpfs on /run with sshd's
   * privilege separation directory and the host's "tailscaled" directory
   * (bound to the stand-in's socket directory for this host), and the host's
   * name as hostname. Returns the argv prefix that runs a program there.
   *
   * (Namespace files bind-mounted with `unshare --mount=FILE` would do too,
   * but binding them fails now and then with EINVAL inside `ip netns exec`.)
   */
  async hostNamespaces(host: TestHost): Promise<string[]> {
    this.netnses.push(host.netns);
    const socketDir = join(this.dir, host.name, "tailscale");
    const script = [
      "set -e",
      `mount -t tmpfs -o mode=0755,size=512m ops-exec-srv-${host.name} /srv`,
      `mkdir -p ${APP_ROOT} ${BUILDS_ROOT}`,
      `mount -t tmpfs -o mode=0755,size=16m ops-exec-run-${host.name} /run`,
      "mkdir -p -m 0755 /run/sshd /run/tailscale",
      `mount --bind ${socketDir} /run/tailscale`,
      `hostname ${host.name}`,
      "echo ready",
      `exec ${SLEEP} infinity`,
    ].join("\n");
    const holder = new Deno.Command(NSENTER!, {
      args: [
        `--net=/var/run/netns/${host.netns}`,
        "--",
        UNSHARE!,
        "--mount",
        "--uts",
        "--propagation",
        "private",
        "/bin/sh",
        "-c",
        script,
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.holders.push(holder);
    const stderr = new Response(holder.stderr).text();
    const reader = holder.stdout.getReader();
    const first = await reader.read();
    reader.releaseLock();
    await holder.stdout.cancel();
    if (!new TextDecoder().decode(first.value ?? new Uint8Array()).startsWith("ready")) {
      const status = await holder.status;
      throw new Error(
        `cannot set up the namespaces of ${host.name} (exit ${status.code}): ${
          (await stderr).trim()
        }`,
      );
    }
    stderr.catch(() => {});
    return [
      NSENTER!,
      `--target=${holder.pid}`,
      "--mount",
      "--uts",
      "--net",
      "--",
    ];
  }

  /** Waits for every start; the first failure is thrown once all have settled. */
  async settle(): Promise<void> {
    const results = await Promise.allSettled(this.pending);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed) throw failed.reason;
  }

  /** Stops and removes everything, in reverse. Never throws. */
  async undo(): Promise<void> {
    await Promise.allSettled(this.pending);
    await Promise.allSettled(this.agents.map((agent) => stopAgent(agent)));
    await Promise.allSettled(this.sshds.map((sshd) => sshd.stop()));
    // What the agents started and left (a killed agent's steps) dies with the
    // host, and the host's mounts with its last process.
    for (const netns of this.netnses) await killNetns(netns);
    for (const holder of this.holders) {
      killQuietly(holder.pid);
      await holder.status;
    }
    await this.tailnet?.close().catch(() => {});
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}

/** Starts `host`'s agent inside it, with the tailscale CLI stand-in first on its PATH. */
function startHostAgent(
  host: TestHost,
  dir: string,
  prefix: string[],
  tailnet: TailnetStandin,
): Promise<AgentProcess> {
  return startAgentProcess(agentConfig(host, HOST_POLICIES[host.name]), {
    dir,
    prefix,
    env: { PATH: `${tailnet.binDir}:${Deno.env.get("PATH") ?? "/usr/bin:/bin"}` },
  });
}

/** A host as the tailnet knows it: a tagged server (so its agent's observe names itself). */
function hostWhois(host: TestHost): string {
  return whoisText("tagged-node", {
    addresses: [`${host.address}/32`],
    name: `${host.name}.tail78f774.ts.net.`,
    computedName: host.name,
    stableId: `nFleet${host.name}CNTRL`,
    tags: ["tag:server"],
  });
}

async function stopAgent(agent: AgentProcess): Promise<void> {
  const stopped = agent.stop("SIGTERM");
  const late = await Promise.race([
    stopped.then(() => false),
    new Promise<boolean>((r) => setTimeout(() => r(true), 10_000)),
  ]);
  if (late) killQuietly(agent.pid);
  await stopped;
  await Deno.remove(agent.dir, { recursive: true }).catch(() => {});
}

async function killNetns(netns: string): Promise<void> {
  const out = await new Deno.Command("ip", { args: ["netns", "pids", netns], stdin: "null" })
    .output();
  for (const pid of new TextDecoder().decode(out.stdout).split("\n").filter(Boolean)) {
    killQuietly(Number(pid));
  }
}

function killNetnsSync(netns: string): void {
  try {
    const out = new Deno.Command("ip", { args: ["netns", "pids", netns], stdin: "null" })
      .outputSync();
    for (const pid of new TextDecoder().decode(out.stdout).split("\n").filter(Boolean)) {
      killQuietly(Number(pid));
    }
  } catch {
    // The namespace is gone.
  }
}

function killQuietly(pid: number): void {
  try {
    Deno.kill(pid, "SIGKILL");
  } catch {
    // Already gone.
  }
}

/** The caller-side grant that allows everything: for tests of the agent's side alone. */
export const EVERYTHING: CapabilitySet = CapabilitySet.of("*");

/**
 * A test that gets its own running fleet on the test network, torn down when
 * it ends (passed or failed). Outside `deno task test:hosts` (no network) it
 * is ignored, except under CI=true, where it fails.
 */
export function fleetTest(
  name: string,
  fn: (fleet: Fleet, t: Deno.TestContext) => Promise<void>,
): void {
  const net = testNetwork();
  Deno.test({
    name,
    ignore: net === null && !IN_CI,
    fn: async (t) => {
      if (net === null) {
        throw new Error(
          "CI=true: multi-host tests run through `deno task test:hosts` (no test network)",
        );
      }
      await using fleet = await Fleet.start(net);
      await fn(fleet, t);
    },
  });
}
