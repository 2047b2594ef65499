/**
 * Transports: {@linkcode LocalExec} runs steps on this machine,
 * {@linkcode SshExec} on a host over the system ssh.
 *
 * @module
 */
export { LocalExec, type LocalExecOptions } from "./local.ts";
export { SshExec, type SshExecOptions } from "./ssh.ts";
export type { RemoteSupervisor } from "./_ssh_wrapper.ts";
