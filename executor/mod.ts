/**
 * The executor contract ({@linkcode Executor}, results, sinks) and the error
 * classes every transport throws.
 *
 * @module
 */
export type {
  DiskUsage,
  Executor,
  HostObservation,
  LogLine,
  LogSink,
  RunOptions,
  RunOutput,
  SyncOpts,
  SyncProgress,
  SyncResult,
} from "./types.ts";
export {
  CapabilityDenied,
  type CapabilityDeniedOptions,
  ConfigError,
  type DenialScope,
  OpsExecError,
  type OpsExecErrorOptions,
  StepError,
  TransportError,
  type TransportErrorKind,
  type TransportErrorOptions,
} from "./errors.ts";
export {
  CollectingSink,
  ConsoleSink,
  type ConsoleSinkOptions,
  NdjsonSink,
  RedactingSink,
  type RedactingSinkOptions,
} from "./sinks.ts";
export { fanOut, type FanOutOptions, type FanOutResult, type HostResult } from "./fan_out.ts";
