import { assertEquals, assertRejects } from "@deps/assert";
import { inNetns, setLink } from "./_network.ts";
import { testNetwork } from "./_testnet.ts";

const net = testNetwork();

Deno.test({
  name: "the controller reaches every host over its tailnet address, and not when the link is cut",
  ignore: net === null,
  fn: async () => {
    const host = net!.hosts[0];
    // A tiny TCP server inside the host's namespace, answering its own name.
    const server = new Deno.Command(inNetns(host.netns)[0], {
      args: [
        ...inNetns(host.netns).slice(1),
        Deno.execPath(),
        "eval",
        `const l = Deno.listen({ hostname: "${host.address}", port: 7999 });
         console.log("ready");
         for await (const c of l) { await c.write(new TextEncoder().encode("${host.name}")); c.close(); }`,
      ],
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    const reader = server.stdout.getReader();
    await reader.read();
    try {
      const read = async () => {
        const conn = await Deno.connect({ hostname: host.address, port: 7999 });
        const buf = new Uint8Array(64);
        const n = await conn.read(buf);
        conn.close();
        return new TextDecoder().decode(buf.subarray(0, n ?? 0));
      };
      assertEquals(await read(), host.name);
      await setLink(net!, host, false);
      await assertRejects(() =>
        Promise.race([
          read(),
          new Promise((_, reject) => setTimeout(() => reject(new Error("timed out")), 1500)),
        ])
      );
      await setLink(net!, host, true);
      assertEquals(await read(), host.name);
    } finally {
      server.kill("SIGKILL");
      await server.status;
      reader.releaseLock();
      await server.stdout.cancel().catch(() => {});
    }
  },
});
