import { assert, assertEquals, assertThrows } from "@deps/assert";
import { ConfigError } from "../executor/errors.ts";
import {
  configFromObject,
  DEFAULT_MAX_CONCURRENT,
  DEFAULT_MAX_REQUEST_BYTES,
  DEFAULT_RSYNC,
  DEFAULT_SYNC_IDLE_TIMEOUT_S,
  LINUX_TAILSCALED_SOCKET,
  parseConfig,
} from "./config.ts";

const DEPLOY = Deno.readTextFileSync(new URL("../deploy/config.toml", import.meta.url));

const minimal = () => ({
  agent: { listen: "127.0.0.1:7070", audit_log: "/tmp/ops-agent/a.jsonl" },
  identity: { provider: "loopback", loopback_identity: "user:dev@localhost" },
  ceiling: { allow: ["demo.*"] },
});

function keyOf(fn: () => unknown): string | undefined {
  return assertThrows(fn, ConfigError).key;
}

Deno.test("config: the deploy example parses to what it says", () => {
  const config = parseConfig(DEPLOY);
  assertEquals(config.agent.listen, { hostname: "100.101.102.103", port: 7070 });
  assertEquals(config.agent.auditLog, "/var/log/ops-agent/audit.jsonl");
  assertEquals(config.agent.maxConcurrent, 16);
  assertEquals(config.identity, {
    provider: "tailscale",
    socket: "/var/run/tailscale/tailscaled.sock",
    capmap: "makenot.work/cap/ops-exec",
  });
  assertEquals(config.ceiling.toJSON(), [
    "bento.*",
    "observe",
    "sando.*",
    "sync.pull:/srv/app",
    "sync.push:/srv/app",
  ]);
  assertEquals(config.grants.length, 2);
  assertEquals(config.grants[1].to, ["tag:sando"]);
  assert(config.grants[1].allow.allows("sync.push", "/srv/app/releases"));
  assert(Object.isFrozen(config) && Object.isFrozen(config.agent));
});

Deno.test("config: defaults, and the tailscale whois source by platform", () => {
  const config = configFromObject(minimal());
  assertEquals(config.agent.maxConcurrent, DEFAULT_MAX_CONCURRENT);
  assertEquals(config.agent.maxRequestBytes, DEFAULT_MAX_REQUEST_BYTES);
  assertEquals(config.grants, []);
  const tailscale = configFromObject({
    ...minimal(),
    identity: { provider: "tailscale" },
  });
  assertEquals(
    tailscale.identity,
    Deno.build.os === "darwin"
      ? { provider: "tailscale", cli: "tailscale" }
      : { provider: "tailscale", socket: LINUX_TAILSCALED_SOCKET },
  );
  const v6 = configFromObject({ ...minimal(), agent: { ...minimal().agent, listen: "[::1]:0" } });
  assertEquals(v6.agent.listen, { hostname: "::1", port: 0 });
});

Deno.test("config: every unknown key or bad value names its key path", () => {
  const cases: [unknown, string][] = [
    [{ ...minimal(), extra: 1 }, "extra"],
    [{ ...minimal(), agent: { ...minimal().agent, lisen: "x" } }, "agent.lisen"],
    [{ ...minimal(), agent: { audit_log: "/x" } }, "agent.listen"],
    [{ ...minimal(), agent: { ...minimal().agent, listen: 7070 } }, "agent.listen"],
    [{ ...minimal(), agent: { ...minimal().agent, listen: "127.0.0.1" } }, "agent.listen"],
    [{ ...minimal(), agent: { ...minimal().agent, listen: "127.0.0.1:70000" } }, "agent.listen"],
    [{ ...minimal(), agent: { ...minimal().agent, listen: "[::g]:1" } }, "agent.listen"],
    [{ ...minimal(), agent: { ...minimal().agent, audit_log: "rel/a.jsonl" } }, "agent.audit_log"],
    [{ ...minimal(), agent: { ...minimal().agent, max_concurrent: 1.5 } }, "agent.max_concurrent"],
    [
      { ...minimal(), agent: { ...minimal().agent, max_request_bytes: 10 } },
      "agent.max_request_bytes",
    ],
    [{ ...minimal(), identity: {} }, "identity.provider"],
    [{ ...minimal(), identity: { provider: "loopback" } }, "identity.loopback_identity"],
    [
      { ...minimal(), identity: { provider: "loopback", loopback_identity: "dev" } },
      "identity.loopback_identity",
    ],
    [
      { ...minimal(), identity: { provider: "loopback", loopback_identity: "group:x" } },
      "identity.loopback_identity",
    ],
    [{ ...minimal(), identity: { ...minimal().identity, socket: "/s" } }, "identity.socket"],
    [
      { ...minimal(), identity: { provider: "tailscale", loopback_identity: "user:x" } },
      "identity.loopback_identity",
    ],
    [
      { ...minimal(), identity: { provider: "tailscale", socket: "/s", cli: "tailscale" } },
      "identity.cli",
    ],
    [
      { ...minimal(), identity: { provider: "tailscale", socket: "relative.sock" } },
      "identity.socket",
    ],
    [{ ...minimal(), identity: { provider: "tailscale", capmap: "" } }, "identity.capmap"],
    [{ ...minimal(), ceiling: {} }, "ceiling.allow"],
    [{ ...minimal(), ceiling: { allow: "demo.*" } }, "ceiling.allow"],
    [{ ...minimal(), ceiling: { allow: ["demo.*", "Demo"] } }, "ceiling.allow[1]"],
    [{ ...minimal(), grant: { to: ["*"], allow: [] } }, "grant"],
    [{ ...minimal(), grant: [{ to: ["*"], allow: [] }, { to: [], allow: [] }] }, "grant[1].to"],
    [{ ...minimal(), grant: [{ to: ["*", "person:x"], allow: [] }] }, "grant[0].to[1]"],
    [{ ...minimal(), grant: [{ to: ["user:"], allow: [] }] }, "grant[0].to[0]"],
    [{ ...minimal(), grant: [{ to: ["*"], allow: ["ok.*", "x.*.y"] }] }, "grant[0].allow[1]"],
    [{ ...minimal(), grant: [{ to: ["*"], allow: ["sync.push:relative"] }] }, "grant[0].allow[0]"],
    [{ ...minimal(), grant: [{ to: ["*"] }] }, "grant[0].allow"],
    [{ ...minimal(), grant: [{ to: ["*"], allow: [], extra: true }] }, "grant[0].extra"],
    [
      { ...minimal(), agent: { ...minimal().agent, listen: "100.101.102.103:7070" } },
      "agent.listen",
    ],
  ];
  for (const [value, key] of cases) {
    assertEquals(keyOf(() => configFromObject(value)), key, JSON.stringify(value));
  }
});

Deno.test("config: TOML errors and TOML types are reported, never half-read", () => {
  const toml = (body: string) =>
    `[agent]\nlisten = "127.0.0.1:1"\naudit_log = "/tmp/ops-agent/a"\n${body}`;
  const base =
    '[identity]\nprovider = "loopback"\nloopback_identity = "user:d@l"\n[ceiling]\nallow = []\n';
  assertThrows(() => parseConfig("[agent"), ConfigError, "is not valid TOML");
  assertThrows(
    () => parseConfig(toml(`max_concurrent = 1979-05-27\n${base}`)),
    ConfigError,
    "agent.max_concurrent",
  );
  assertThrows(
    () => parseConfig(toml(`max_concurrent = 3.0e0\n${base}`)),
    ConfigError,
    "agent.max_concurrent",
  );
  assertEquals(parseConfig(toml(base)).ceiling.isEmpty, true);
  const error = assertThrows(
    () => parseConfig(toml(`${base}[[grant]]\nto = ["*"]\nallow = ["ok", 5]\n`)),
    ConfigError,
  );
  assertEquals(error.key, "grant[0].allow[1]");
  const typo = assertThrows(
    () => parseConfig(toml(`${base}[[grants]]\nto = ["*"]\n`)),
    ConfigError,
  );
  assertEquals(typo.key, "grants");
  assert(typo.message.includes('did you mean "grant"'));
});

Deno.test("config: sync_idle_timeout and sync_confinement, their defaults and bad values", () => {
  const config = configFromObject(minimal());
  assertEquals(config.agent.syncIdleTimeoutS, DEFAULT_SYNC_IDLE_TIMEOUT_S);
  assertEquals(config.agent.syncConfinement, Deno.build.os === "linux" ? "namespace" : "none");
  const withAgent = (extra: Record<string, unknown>) => ({
    ...minimal(),
    agent: { ...minimal().agent, ...extra },
  });
  assertEquals(configFromObject(withAgent({ sync_idle_timeout: 30 })).agent.syncIdleTimeoutS, 30);
  assertEquals(
    configFromObject(withAgent({ sync_confinement: "none" })).agent.syncConfinement,
    "none",
  );
  for (const bad of [0, 86_401, "60", 1.5]) {
    assertEquals(
      keyOf(() => configFromObject(withAgent({ sync_idle_timeout: bad }))),
      "agent.sync_idle_timeout",
    );
  }
  for (const bad of ["chroot", "", 1]) {
    assertEquals(
      keyOf(() => configFromObject(withAgent({ sync_confinement: bad }))),
      "agent.sync_confinement",
    );
  }
  if (Deno.build.os !== "linux") {
    assertEquals(
      keyOf(() => configFromObject(withAgent({ sync_confinement: "namespace" }))),
      "agent.sync_confinement",
    );
  }
});

Deno.test("config: agent.rsync names the rsync /v1/sync runs: an absolute path, default rsync on the PATH", () => {
  assertEquals(configFromObject(minimal()).agent.rsync, DEFAULT_RSYNC);
  const homebrew = minimal();
  (homebrew.agent as Record<string, unknown>).rsync = "/opt/homebrew/bin/rsync";
  assertEquals(configFromObject(homebrew).agent.rsync, "/opt/homebrew/bin/rsync");
  for (const bad of ["rsync", "bin/rsync", 3]) {
    const config = minimal();
    (config.agent as Record<string, unknown>).rsync = bad;
    assertEquals(keyOf(() => configFromObject(config)), "agent.rsync");
  }
});

Deno.test("config: issue 13's keys, their defaults and bad values", () => {
  const withAgent = (extra: Record<string, unknown>) => {
    const doc = minimal();
    return { ...doc, agent: { ...doc.agent, ...extra } };
  };
  const agent = configFromObject(minimal()).agent;
  assertEquals(
    [agent.maxKillGraceMs, agent.shutdownGraceMs, agent.stepIsolation, agent.auditSyslog],
    [30_000, 10_000, "none", "auto"],
  );
  assertEquals([agent.maxConnections, agent.maxConnectionsPerPeer], [512, 64]);
  assertEquals([agent.headerTimeoutMs, agent.requestTimeoutMs, agent.idleTimeoutMs], [
    10_000,
    60_000,
    30_000,
  ]);
  // A caller may hold a connection per running step.
  assertEquals(
    configFromObject(withAgent({ max_concurrent: 100 })).agent.maxConnectionsPerPeer,
    200,
  );
  assertEquals(configFromObject(withAgent({ max_kill_grace: 2 })).agent.maxKillGraceMs, 2000);
  for (
    const [extra, key] of [
      [{ max_kill_grace: -1 }, "agent.max_kill_grace"],
      [{ max_kill_grace: 2 ** 31 }, "agent.max_kill_grace"],
      [{ shutdown_grace: 601 }, "agent.shutdown_grace"],
      [{ step_isolation: "cgroup" }, "agent.step_isolation"],
      [{ audit_syslog: "yes" }, "agent.audit_syslog"],
      [{ audit_syslog: false, audit_syslog_socket: "/dev/log" }, "agent.audit_syslog_socket"],
      [{ audit_syslog_socket: "dev/log" }, "agent.audit_syslog_socket"],
      [{ header_timeout: 0 }, "agent.header_timeout"],
      [{ max_connections: 1 }, "agent.max_connections"],
      [{ listen: "localhost:7070" }, "agent.listen"],
    ] as const
  ) {
    assertEquals(keyOf(() => configFromObject(withAgent(extra))), key, JSON.stringify(extra));
  }
  // node: names, node-id: StableIDs; a node: value that reads as a StableID is refused.
  const grant = (to: string) => ({ ...minimal(), grant: [{ to: [to], allow: ["demo.x"] }] });
  assertEquals(configFromObject(grant("node-id:7")).grants[0].to, ["node-id:7"]);
  assertEquals(configFromObject(grant("node:web-7")).grants[0].to, ["node:web-7"]);
  for (const ambiguous of ["node:7", "node:nSwZHPm4c121CNTRL"]) {
    const error = assertThrows(() => configFromObject(grant(ambiguous)), ConfigError);
    assertEquals(error.key, "grant[0].to[0]");
    assert(error.message.includes("node-id:"), error.message);
  }
});
