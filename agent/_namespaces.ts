// Linux namespaces, made the one way both of the agent's confinements make
// them: a transfer's rsync (_sync_confine.ts) and a step (_step_isolation.ts).
// As root, `unshare` makes them directly; as an unprivileged account, inside
// a user namespace of its own in which the account is root, and the confined
// program is then mapped back to the agent's own account. Which of the two
// works is found once, at start, by running the confinement itself.

import { ConfigError } from "../executor/errors.ts";

/** How this host makes namespaces for the agent. */
export interface NamespaceMode {
  /** Inside an unprivileged user namespace (the agent is not root). */
  userNamespace: boolean;
}

/**
 * The `unshare` prefix that makes `namespaces` (e.g. `["--mount", "--pid"]`)
 * for `mode`, in front of the program (after `--`).
 */
export function unshareArgv(mode: NamespaceMode, namespaces: readonly string[]): string[] {
  return mode.userNamespace
    ? ["unshare", "--user", "--map-root-user", ...namespaces, "--"]
    : ["unshare", ...namespaces, "--"];
}

/**
 * Finds how this host makes namespaces: runs `probe` as root (no user
 * namespace) and, when that fails, inside a user namespace. `probe`
 * resolves to `null` when the confinement worked, else to what failed.
 *
 * @param key The config key that asked for the confinement (named in the error).
 * @param what What is confined, for the error ("a transfer", "a step").
 * @throws {ConfigError} When neither works, naming the fixes.
 */
export async function chooseNamespaceMode(
  key: string,
  what: string,
  probe: (mode: NamespaceMode) => Promise<string | null>,
): Promise<NamespaceMode> {
  const asRoot = await probe({ userNamespace: false });
  if (asRoot === null) return { userNamespace: false };
  const asUser = await probe({ userNamespace: true });
  if (asUser === null) return { userNamespace: true };
  throw new ConfigError(
    key,
    `"namespace": this host cannot give ${what} namespaces of its own (as root: ${asRoot}; in a user namespace: ${asUser}). ` +
      `Run the agent as root, or allow unprivileged user namespaces (kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0, no AppArmor/seccomp rule against them), ` +
      `or set ${key.replace(/^agent\./, "")} = "none" and read what that gives in docs/agent.md`,
  );
}
