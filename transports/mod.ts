/**
 * Transports: {@linkcode LocalExec} runs steps on this machine.
 *
 * @module
 */
export { LocalExec, type LocalExecOptions } from "./local.ts";
