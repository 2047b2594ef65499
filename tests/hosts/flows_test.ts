// Acceptance 1 and 2 of the multi-host issue: the two users' flows, run as
// they would run them, against real agents on separate hosts.
//
// 1. Sando (examples/sando_promote.ts) promotes a release through canary then
//    prod, as the tagged tag:sando node; with a failing canary the rollout
//    halts and prod receives nothing.
// 2. Bento (examples/bento_release.ts) builds, signs, notarizes and publishes
//    on the "mac" host as bob (group:release) and pulls the artifact back;
//    `bento.sign` is allowed there only by the mac's ceiling and grant, and is
//    refused (scope agent) by the "plain" host, whose ceiling lacks it, although
//    the caller's own set allows it.

import {
  assert,
  assertEquals,
  assertFalse,
  assertInstanceOf,
  assertRejects,
  assertStringIncludes,
} from "@deps/assert";
import { join } from "@deps/path";
import { CapabilityDenied, CapabilitySet, CollectingSink, type Executor, Step } from "../../mod.ts";
import { promote, type Tier } from "../../examples/sando_promote.ts";
import { release, STAND_IN_COMMANDS } from "../../examples/bento_release.ts";
import { APP_ROOT, BUILDS_ROOT, type Fleet, fleetTest } from "./_fleet.ts";

const CHECK = CapabilitySet.of("fleet.*");

/** Runs `script` on `host` over its own sshd (independent of the agent under test). */
async function overSsh(fleet: Fleet, host: string, script: string): Promise<string> {
  const sink = new CollectingSink();
  const out = await fleet.ssh(host, CHECK).runStreaming(Step.shell("fleet.check", script), sink);
  assert(out.success, `${host}: ${script}: exit ${out.exitCode}: ${sink.text("stderr")}`);
  return sink.text("stdout");
}

/** A release artifact: an app file and a health check that exits `healthExit`. */
async function artifact(release: string, healthExit: number): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: `ops-exec-artifact-${release}-` });
  await Deno.chmod(dir, 0o755); // a release is readable by the app's account (rsync keeps modes)
  await Deno.writeTextFile(join(dir, "app.txt"), `release ${release}\n`);
  await Deno.writeTextFile(
    join(dir, "health.sh"),
    `#!/bin/sh\necho "health of ${release} on $(hostname): exit ${healthExit}"\nexit ${healthExit}\n`,
    { mode: 0o755 },
  );
  await Deno.chmod(join(dir, "health.sh"), 0o755);
  return dir;
}

fleetTest(
  "Sando: promotes canary then prod; a failing canary halts, prod untouched",
  async (fleet, t) => {
    const caps = CapabilitySet.of("sando.*", "observe", `sync.push:${APP_ROOT}`);
    const tiers: Tier[] = [
      { name: "canary", hosts: [fleet.rpc("canary", "sando", caps)] },
      { name: "prod", hosts: [fleet.rpc("prod", "sando", caps)] },
    ];
    const sinks = new Map<string, CollectingSink>();
    const sinkFor = (e: Executor) => {
      const sink = sinks.get(e.host) ?? new CollectingSink();
      sinks.set(e.host, sink);
      return sink;
    };
    const good = await artifact("1.0.0", 0);
    const bad = await artifact("2.0.0", 1);
    try {
      await t.step("a healthy release reaches canary, then prod", async () => {
        const log: string[] = [];
        const report = await promote(tiers, {
          artifact: good,
          release: "1.0.0",
          root: APP_ROOT,
          sinkFor,
          log: (m) => log.push(m),
        });
        assertEquals(report, { promoted: ["canary", "prod"], failures: [] }, log.join("\n"));
        for (const host of ["canary", "prod"]) {
          assertEquals(
            await overSsh(fleet, host, `cd ${APP_ROOT}; readlink current; cat current/app.txt`),
            "releases/1.0.0\nrelease 1.0.0",
          );
          assertStringIncludes(sinks.get(host)!.text(), `health of 1.0.0 on ${host}: exit 0`);
        }
        // The tiers went in order: canary was pushed before prod was looked at.
        const canaryPushed = log.findIndex((m) => m.includes("canary: pushed"));
        const prodTier = log.findIndex((m) => m.startsWith("tier prod"));
        assert(canaryPushed >= 0 && canaryPushed < prodTier, log.join("\n"));
      });

      await t.step("a release failing its canary health check never reaches prod", async () => {
        const prodAudit = fleet.host("prod").agent.auditLines().length;
        const report = await promote(tiers, {
          artifact: bad,
          release: "2.0.0",
          root: APP_ROOT,
          sinkFor,
          log: () => {},
        });
        assertEquals(report.promoted, []);
        assertEquals(report.haltedAt, "canary");
        assertEquals(report.failures.map((f) => [f.host, f.phase, f.reason]), [
          ["canary", "health", "exit 1"],
        ]);
        // Canary is rolled back to the release it had.
        assertEquals(
          await overSsh(fleet, "canary", `cd ${APP_ROOT}; readlink current; ls releases`),
          "releases/1.0.0\n1.0.0\n2.0.0",
        );
        // Prod: no new files, still on 1.0.0, and its agent heard nothing of it.
        assertEquals(
          await overSsh(fleet, "prod", `cd ${APP_ROOT}; readlink current; ls releases`),
          "releases/1.0.0\n1.0.0",
        );
        assertEquals(fleet.host("prod").agent.auditLines().length, prodAudit);
      });
    } finally {
      await Deno.remove(good, { recursive: true });
      await Deno.remove(bad, { recursive: true });
    }
  },
);

fleetTest(
  "Bento: build, sign, notarize, publish on the mac; sign refused by a host's ceiling",
  async (fleet, t) => {
    const caps = CapabilitySet.of(
      "bento.*",
      `sync.push:${BUILDS_ROOT}`,
      `sync.pull:${BUILDS_ROOT}`,
    );
    const source = await Deno.makeTempDir({ prefix: "ops-exec-bento-src-" });
    const out = await Deno.makeTempDir({ prefix: "ops-exec-bento-out-" });
    await Deno.mkdir(join(source, "Sources"));
    await Deno.writeTextFile(join(source, "Sources", "main.swift"), 'print("hello")\n');
    await Deno.writeTextFile(join(source, "Info.plist"), "<plist><dict/></plist>\n");
    const version = "1.2.3";
    try {
      await t.step("the whole flow completes on the mac, and the artifact comes back", async () => {
        const mac = fleet.rpc("mac", "bob", caps);
        // What allows bob to sign there: the mac's ceiling and its grant (config and CapMap).
        assert((await mac.remoteCapabilities()).allows("bento.sign"));
        const sink = new CollectingSink();
        const report = await release(mac, {
          source,
          version,
          builds: BUILDS_ROOT,
          out,
          sink,
          log: () => {},
        });
        assert(report.ok, sink.text());
        assertEquals(report.phases.map((p) => [p.name, p.output.exitCode]), [
          ["build", 0],
          ["sign", 0],
          ["notarize", 0],
          ["publish", 0],
        ]);
        assertEquals(report.transfers.length, 2);

        const tar = await Deno.readFile(join(out, `App-${version}.tar`));
        const digest = Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", tar)))
          .map((b) => b.toString(16).padStart(2, "0")).join("");
        const signature = await Deno.readTextFile(join(out, `App-${version}.tar.sig`));
        assert(signature.startsWith(digest), `signature ${signature} for digest ${digest}`);
        const ticket = JSON.parse(
          await Deno.readTextFile(join(out, `App-${version}.notarization.json`)),
        );
        assertEquals(ticket, { status: "Accepted", version });
        assertEquals(
          await overSsh(fleet, "mac", `ls ${BUILDS_ROOT}/published`),
          [`App-${version}.notarization.json`, `App-${version}.tar`, `App-${version}.tar.sig`]
            .join("\n"),
        );
        const signs = fleet.host("mac").agent.auditLines()
          .filter((line) => line.action === "bento.sign" && line.event !== "start");
        assertEquals(signs.map((line) => [line.decision, line.exitCode]), [["allowed", 0]]);
      });

      await t.step(
        "the same sign step on a host whose ceiling lacks bento.sign: refused, scope agent",
        async () => {
          const plain = fleet.rpc("plain", "bob", caps);
          const marker = `${BUILDS_ROOT}/signed-on-plain`;
          const sign = Step.shell("bento.sign", `touch ${marker}; ${STAND_IN_COMMANDS.sign}`, {
            env: { VERSION: version },
          });
          // The caller's own set allows it; so does plain's grant to group:release.
          assert(plain.capabilities().allows("bento.sign"));
          const denied = await assertRejects(
            () => plain.runStreaming(sign, new CollectingSink()),
            CapabilityDenied,
          );
          assertInstanceOf(denied, CapabilityDenied);
          assertEquals([denied.scope, denied.action, denied.host], [
            "agent",
            "bento.sign",
            "plain",
          ]);
          assertStringIncludes(denied.message, "ceiling");
          assertFalse((await fleet.inHost("plain", `test -e ${marker}`)).code === 0, "nothing ran");
          const audit = fleet.host("plain").agent.auditLines()
            .filter((line) => line.action === "bento.sign");
          assertEquals(audit.map((line) => [line.decision, line.status]), [["denied", 403]]);
          // What plain's ceiling does allow, bob may run there.
          const build = await plain.runStreaming(
            Step.shell("bento.build", "echo building on $(hostname)"),
            new CollectingSink(),
          );
          assert(build.success);
        },
      );
    } finally {
      await Deno.remove(source, { recursive: true });
      await Deno.remove(out, { recursive: true });
    }
  },
);
