// Issue 18.5: a fanOut host error printed the README's way
// (`console.log(r.host, r.status, r.output?.exitCode ?? r.error)`) is one
// readable line, not a stack with its cause. Run as a program of its own, so
// that what is checked is what a person sees on stdout.

import { assertEquals, assertMatch } from "@deps/assert";

const ROOT = new URL("../", import.meta.url).pathname;

Deno.test("18.5 fanOut host errors printed the README's way are one line each", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ops-exec-print-" });
  try {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const closed = (listener.addr as Deno.NetAddr).port;
    listener.close();
    await Deno.writeTextFile(
      `${dir}/fleet.ts`,
      `import { CapabilitySet, fanOut, LocalExec, Step } from "${ROOT}mod.ts";
import { AgentRpc } from "${ROOT}transports/rpc.ts";

const caps = CapabilitySet.of("sando.*");
const fleet = [
  new LocalExec(caps, { host: "web-1" }),
  new LocalExec(CapabilitySet.of("bento.*"), { host: "db-1" }),
  new AgentRpc({ url: "http://127.0.0.1:${closed}", host: "mac-1" }, caps),
];
const health = Step.shell("sando.health", "true");
const { results } = await fanOut(fleet, health, { sinkFor: () => ({ write() {} }) });
for (const r of results) console.log(r.host, r.status, r.output?.exitCode ?? r.error);
`,
    );
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--quiet", `${dir}/fleet.ts`],
      cwd: dir,
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stdout = new TextDecoder().decode(out.stdout);
    assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
    const lines = stdout.trimEnd().split("\n");
    assertEquals(lines.length, 3, stdout);
    assertEquals(lines[0], "web-1 ran 0");
    assertEquals(
      lines[1],
      'db-1 error CapabilityDenied: action "sando.health" on host db-1 is not granted by the ' +
        "caller's capability set: granted: bento.*",
    );
    assertMatch(
      lines[2],
      /^mac-1 error TransportError \[unreachable\]: mac-1: cannot reach the agent at http:\/\/127\.0\.0\.1:\d+: connection refused/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
