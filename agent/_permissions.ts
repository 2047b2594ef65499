// Checks a config against the permissions this process runs with, so that a
// path outside the `agent` permission set is reported at start-up (and by
// --check) as a ConfigError naming the key, not as a failure at the first
// request.

import { ConfigError } from "../executor/errors.ts";
import { type AgentConfig, DEFAULT_RSYNC } from "./config.ts";
import { formatHostPort } from "./_net.ts";

const SET = 'the agent permission set ("permissions.agent" in deno.json)';

/**
 * Every config value the running permissions do not cover, as ConfigErrors.
 * Under `-A` there are none.
 */
export function permissionProblems(config: AgentConfig): ConfigError[] {
  const problems: ConfigError[] = [];
  const { listen, auditLog } = config.agent;
  const host = formatHostPort(listen.hostname, listen.port);
  if (!granted({ name: "net", host })) {
    problems.push(
      new ConfigError(
        "agent.listen",
        `${host} is outside the net scope of ${SET}: listen on a loopback or tailnet (100.64.0.0/10) address, or extend the set and rebuild`,
      ),
    );
  }
  if (!granted({ name: "write", path: auditLog })) {
    problems.push(
      new ConfigError(
        "agent.audit_log",
        `${auditLog} is outside the write scope of ${SET}: use a path under /var/log/ops-agent (Linux) or the set's other log directories, or extend the set and rebuild`,
      ),
    );
  }
  const rsync = config.agent.rsync;
  if (rsync !== DEFAULT_RSYNC && !granted({ name: "run", command: rsync })) {
    problems.push(
      new ConfigError(
        "agent.rsync",
        `${rsync} is outside the run scope of ${SET}: use /usr/bin/rsync, /usr/local/bin/rsync or /opt/homebrew/bin/rsync, or extend the set and rebuild`,
      ),
    );
  }
  const identity = config.identity;
  if (identity.provider === "tailscale" && identity.socket !== undefined) {
    const path = identity.socket;
    const ok = granted({ name: "read", path }) && granted({ name: "write", path }) &&
      granted({ name: "net", host: `unix:${path}` }) &&
      granted({ name: "net", host: "local-tailscaled.sock:80" });
    if (!ok) {
      problems.push(
        new ConfigError(
          "identity.socket",
          `${path} is not a socket ${SET} may use (read, write and net "unix:${path}"): use tailscaled's standard socket, or extend the set and rebuild`,
        ),
      );
    }
  }
  if (identity.provider === "tailscale" && identity.cli !== undefined) {
    if (!granted({ name: "run", command: identity.cli })) {
      problems.push(
        new ConfigError(
          "identity.cli",
          `${identity.cli} is outside the run scope of ${SET} (names resolve through PATH when the agent starts)`,
        ),
      );
    }
  }
  return problems;
}

function granted(descriptor: Deno.PermissionDescriptor): boolean {
  try {
    return Deno.permissions.querySync(descriptor).state === "granted";
  } catch {
    return false;
  }
}
