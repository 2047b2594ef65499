// The mutations `deno task mutants` puts into a scratch copy of the repository,
// one at a time: small, plausible bugs that the suite once let through (issue
// 10), and the gates every transport must keep. Each names the tests that must
// fail with it. A snippet must occur exactly once in its file; when the code
// is reshaped and a snippet is gone, the task fails until the mutation is
// updated (docs/testing.md).

/** One textual change: `find` (exactly once in the file) becomes `replace`. */
export interface Edit {
  /** The exact source text, found once. */
  find: string;
  /** What it becomes. */
  replace: string;
}

/** The tests one mutation must make fail. */
export interface TestRun {
  /** Test files, relative to the repository root. */
  files: string[];
  /** `deno test --filter` (a `/regex/` or a substring of the test names). */
  filter?: string;
}

/** A bug to put in, and the tests that must catch it. */
export interface Mutation {
  /** A short, unique name. */
  id: string;
  /** The bug, in words: what it would mean. */
  bug: string;
  /** The file it changes, relative to the repository root. */
  file: string;
  /** The changes, applied in order. */
  edits: Edit[];
  /** The tests that must fail. */
  tests: TestRun;
}

const CONTRACT = "tests/transport_contract_test.ts";
const GUARDS = "tests/agent_guards_test.ts";

/** The contract test of one transport (`LocalExec`, `AgentRpc`, `SshExec (sh)`, ...) on `what`. */
function contract(transport: string, what: string): TestRun {
  const name = transport.replace(/[()]/g, "\\$&");
  return { files: [CONTRACT], filter: `/^${name}: ${what}/` };
}

function guard(what: string): TestRun {
  return { files: [GUARDS], filter: what };
}

const GATE = "a denied run, observe, push or pull";
const STUBBORN = "a step that ignores SIGTERM";
const CANCELLED = "a cancelled step that exits 0";

/** The caller-side gate skipped for each call of each transport. */
function gateMutations(): Mutation[] {
  const transports = [
    ["local", "transports/local.ts", "LocalExec"],
    ["ssh", "transports/ssh.ts", "SshExec (session)"],
    ["rpc", "transports/agent_rpc.ts", "AgentRpc"],
  ] as const;
  const sync = "const target = gateSync(this.#caps, action, remotePath, this.host);";
  const skipFor = (action: string) =>
    `const target = action === "${action}" ? remotePath : gateSync(this.#caps, action, remotePath, this.host);`;
  return transports.flatMap(([id, file, name]) => [
    {
      id: `${id}-run-gate`,
      bug: `${name}.runStreaming skips the caller-side gate`,
      file,
      edits: [{
        find: "assertAllowed(this.#caps, step.action, { host: this.host });",
        replace: "",
      }],
      tests: contract(name, GATE),
    },
    {
      id: `${id}-observe-gate`,
      bug: `${name}.observe skips the caller-side gate`,
      file,
      edits: [{ find: 'assertAllowed(this.#caps, "observe", { host: this.host });', replace: "" }],
      tests: contract(name, GATE),
    },
    {
      id: `${id}-push-gate`,
      bug: `${name}.push skips the caller-side gate`,
      file,
      edits: [{ find: sync, replace: skipFor("sync.push") }],
      tests: contract(name, GATE),
    },
    {
      id: `${id}-pull-gate`,
      bug: `${name}.pull skips the caller-side gate`,
      file,
      edits: [{ find: sync, replace: skipFor("sync.pull") }],
      tests: contract(name, GATE),
    },
  ]);
}

/** Every mutation the task runs. */
export const MUTATIONS: readonly Mutation[] = [
  // ---- the table of issue 10 -------------------------------------------------------------
  {
    id: "grants-capmap-ceiling",
    bug: "CapMap grants are not intersected with the ceiling (only config grants are)",
    file: "agent/_grants.ts",
    edits: [{
      find: "return { granted, effective: granted.intersect(config.ceiling) };",
      replace:
        "return { granted, effective: granted.intersect(config.ceiling).union(caller.capGrants) };",
    }],
    tests: guard("CapMap grants are held to the host's ceiling"),
  },
  {
    id: "whois-tags",
    bug: "a node counts as tagged only by the tagged-devices login, not by Node.Tags",
    file: "agent/_whois.ts",
    edits: [{
      find: "const isTagged = tags.length > 0 || login === TAGGED_DEVICES;",
      replace: "const isTagged = login === TAGGED_DEVICES;",
    }],
    tests: guard("a tagged node that kept its owner's user"),
  },
  {
    id: "grants-tagged-person",
    bug: "user: and group: selectors match a tagged caller that carries a login",
    file: "agent/_grants.ts",
    edits: [{
      find: "const isPerson = caller.tags.length === 0 && caller.login !== undefined;",
      replace: "const isPerson = caller.login !== undefined;",
    }],
    tests: { files: ["agent/_whois_test.ts"] },
  },
  {
    id: "app-loopback-fallback",
    bug: "a whois failure on a loopback peer falls back to a loopback identity instead of 503",
    file: "agent/_app.ts",
    edits: [
      {
        find: 'import { type CallerIdentity, summarize } from "./_whois.ts";',
        replace: 'import { type CallerIdentity, loopbackIdentity, summarize } from "./_whois.ts";',
      },
      {
        find: "if (!unknown && !(error instanceof IdentityUnavailable)) throw error;",
        replace: `if (!unknown && !(error instanceof IdentityUnavailable)) throw error;
      if (!unknown && (ip.startsWith("127.") || ip === "::1")) {
        const caller = loopbackIdentity("user:dev@localhost", from);
        return { caller, from, grant: entitlement(this.config, caller), started, endpoint };
      }`,
      },
    ],
    tests: guard("whois failing is 503 for every peer"),
  },
  {
    id: "app-audit-env",
    bug: "a step's env values are written into its audit lines",
    file: "agent/_app.ts",
    edits: [{
      find: "const about = { digest, ...(step.label !== undefined ? { label: step.label } : {}) };",
      replace:
        "const about = { digest, env: step.env, ...(step.label !== undefined ? { label: step.label } : {}) };",
    }],
    tests: guard("env values and stdin never reach the audit log"),
  },
  {
    id: "app-sync-slot",
    bug: "a sync transfer starts without taking a max_concurrent slot",
    file: "agent/_app.ts",
    edits: [{
      find: `const slot = await this.admit(ctx, action, { path });
    if (slot instanceof Response) return slot;`,
      replace: "const slot: Slot = { onStop: null, release: () => {} };",
    }],
    tests: guard("a sync transfer takes a max_concurrent slot"),
  },
  // AgentRpc.pull skipping the caller-side gate: rpc-pull-gate, with the other gates below.
  {
    id: "sh-env-not-cleared",
    bug: "the sh supervisor runs the step with `env` instead of `env -i`",
    file: "transports/_remote/step.sh",
    edits: [
      { find: `shift; exec setsid env -i "$@"'`, replace: `shift; exec setsid env "$@"'` },
      { find: `shift; exec env -i "$@"' \\`, replace: `shift; exec env "$@"' \\` },
    ],
    tests: contract("SshExec (sh)", "a step sees the stated base environment"),
  },
  {
    id: "lines-surrogate",
    bug: "the 1 MiB split may cut a UTF-16 surrogate pair",
    file: "executor/_lines.ts",
    edits: [{ find: "if (unit >= 0xd800 && unit <= 0xdbff) cut--;", replace: "" }],
    tests: { files: ["executor/_lines_test.ts"], filter: "surrogate pair" },
  },
  {
    id: "spawn-success-ignores-cancelled",
    bug: "`success` ignores `cancelled` (a cancelled step that exits 0 is a success)",
    file: "executor/_spawn.ts",
    edits: [{
      find: "success: result.exitCode === 0 && !result.timedOut && !result.cancelled,",
      replace: "success: result.exitCode === 0 && !result.timedOut,",
    }],
    tests: contract("LocalExec", CANCELLED),
  },
  {
    id: "spawn-term-only",
    bug: "the group never gets SIGKILL after the grace (TERM only): LocalExec and the agent",
    file: "executor/_spawn.ts",
    edits: [{
      find: 'if (outcome === "grace") await signalGroup(child.pid, "SIGKILL");',
      replace: "",
    }],
    tests: { files: [CONTRACT], filter: `/^(LocalExec|AgentRpc): ${STUBBORN}/` },
  },

  // ---- TERM only, in the remote supervisors ------------------------------------------------
  {
    id: "session-term-only",
    bug: "the perl session supervisor never sends SIGKILL after a step's grace",
    file: "transports/_remote/session.pl",
    edits: [{
      find: 'if ($t >= $s->{kd}) { kill "KILL", -$s->{pid}; $s->{kd} = $t + 3600 }',
      replace: "if ($t >= $s->{kd}) { $s->{kd} = $t + 3600 }",
    }],
    tests: contract("SshExec (session)", STUBBORN),
  },
  {
    id: "perl-wrapper-term-only",
    bug: "the per-step perl supervisor never sends SIGKILL after the grace",
    file: "transports/_remote/step.pl",
    edits: [{
      find: `  select(undef, undef, undef, $grace / 1000);
  kill "KILL", -$pid;`,
      replace: "  select(undef, undef, undef, $grace / 1000);",
    }],
    tests: contract("SshExec (per-step perl)", STUBBORN),
  },
  {
    id: "sh-wrapper-term-only",
    bug: "the sh supervisor never sends SIGKILL after the grace",
    file: "transports/_remote/step.sh",
    edits: [{
      find: `  sleep "$gs"
  kill -KILL -"$k" || kill -KILL "$k"`,
      replace: `  sleep "$gs"`,
    }],
    tests: contract("SshExec (sh)", STUBBORN),
  },

  // ---- success ignores cancelled, in the other transports ----------------------------------
  {
    id: "ssh-session-success-ignores-cancelled",
    bug: "SshExec (session) counts a cancelled step that exits 0 as a success",
    file: "transports/ssh.ts",
    edits: [{
      find: "success: result.status?.exitCode === 0 && !result.timedOut && !result.cancelled,",
      replace: "success: result.status?.exitCode === 0 && !result.timedOut,",
    }],
    tests: contract("SshExec (session)", CANCELLED),
  },
  {
    id: "ssh-own-session-success-ignores-cancelled",
    bug: "SshExec (a session per step) counts a cancelled step that exits 0 as a success",
    file: "transports/ssh.ts",
    edits: [{
      find: "success: exitCode === 0 && !result.timedOut && !result.cancelled,",
      replace: "success: exitCode === 0 && !result.timedOut,",
    }],
    tests: contract("SshExec (sh)", CANCELLED),
  },
  {
    id: "rpc-success-ignores-cancelled",
    bug: "AgentRpc counts a step the agent cancelled, which exited 0, as a success",
    file: "transports/agent_rpc.ts",
    edits: [{
      find: "success: event.exitCode === 0 && !event.timedOut && !event.cancelled,",
      replace: "success: event.exitCode === 0 && !event.timedOut,",
    }],
    tests: contract("AgentRpc", CANCELLED),
  },

  // ---- the caller-side gate of every transport and call --------------------------------------
  ...gateMutations(),

  // ---- the grant grammar and the step's wire form ------------------------------------------
  {
    id: "path-string-prefix",
    bug: "path roots compared by string prefix (/srv/app would hold /srv/application)",
    file: "capability/path.ts",
    edits: [{
      find: "return normal === root || normal.startsWith(`${root}/`);",
      replace: "return normal.startsWith(root);",
    }],
    tests: { files: ["capability/capability_set_test.ts"] },
  },
  {
    id: "grant-bare-prefix",
    bug: "`prefix.*` allows the bare prefix (bento.* would allow bento)",
    file: "capability/grant.ts",
    edits: [{
      find: "return action.startsWith(`${grant.prefix}.`);",
      replace: "return action === grant.prefix || action.startsWith(`${grant.prefix}.`);",
    }],
    tests: { files: ["capability/capability_set_test.ts"] },
  },
  {
    id: "step-unknown-fields",
    bug: "Step.fromJSON accepts unknown fields",
    file: "step/step.ts",
    edits: [{
      find: "if (!JSON_FIELDS.has(key)) {",
      replace: "if (false && !JSON_FIELDS.has(key)) {",
    }],
    tests: { files: ["step/step_test.ts"] },
  },

  // ---- the session's watchdog (the formerly flaky test) --------------------------------------
  {
    id: "session-kill-unanswered",
    bug: "a kill request the supervisor never answers leaves the step waiting forever",
    file: "transports/_ssh_session.ts",
    edits: [{
      find: "if (this.#steps.get(id) === state && !state.killAcked) {",
      replace: "if (false && this.#steps.get(id) === state && !state.killAcked) {",
    }],
    tests: {
      files: ["transports/_ssh_session_test.ts"],
      filter: "a supervisor that stops answering",
    },
  },
];
