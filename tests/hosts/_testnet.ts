// The test network as the multi-host tests see it: read from the file that
// tests/hosts/run.ts wrote. Tests that find none were not started by the
// runner; they skip (or fail under CI=true).

import type { TestNetwork } from "./_network.ts";

/** The running test network, or `null` outside `deno task test:hosts`. */
export function testNetwork(): TestNetwork | null {
  const path = Deno.env.get("OPS_EXEC_TESTNET");
  if (!path) return null;
  return JSON.parse(Deno.readTextFileSync(path)) as TestNetwork;
}
