/**
 * The error classes of ops-exec. Every error the library throws on purpose is
 * an {@linkcode OpsExecError} with a stable `.code`, so callers can branch on
 * the code instead of parsing messages.
 *
 * @module
 */

/** Options shared by every {@linkcode OpsExecError}. */
export interface OpsExecErrorOptions {
  /** The underlying error, when there is one. */
  cause?: unknown;
}

/**
 * The base class of every error ops-exec throws on purpose.
 *
 * Each prints as one line a person can read, the same way everywhere:
 * `String(error)`, `${error}` and `console.log(error)` (Deno and Node) give
 * `Name: message` (with the code or kind in brackets where the name does not
 * say it, e.g. `TransportError [unreachable]: web-1: ...`). The stack, the
 * cause and the transport's diagnostics stay on the error (`.stack`,
 * `.cause`, `.detail`), and an uncaught error still shows its stack.
 *
 * @example Branching on the code
 * ```ts
 * import { OpsExecError } from "@makenot/ops-exec";
 *
 * try {
 *   throw new OpsExecError("example_code", "something went wrong");
 * } catch (error) {
 *   if (error instanceof OpsExecError && error.code === "example_code") {
 *     console.log("handled:", error.message);
 *   }
 * }
 * ```
 */
export class OpsExecError extends Error {
  /** A stable, machine-readable code such as `capability_denied`. */
  readonly code: string;

  /**
   * Creates an error with a machine-readable code.
   *
   * @param code A stable code callers can branch on.
   * @param message A sentence a person can act on.
   * @param options The cause, when there is one.
   */
  constructor(code: string, message: string, options?: OpsExecErrorOptions) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = "OpsExecError";
    this.code = code;
  }

  /**
   * The error as one line: `Name: message`, or `Name [code]: message` for
   * an error of this base class (whose name says nothing of the code).
   */
  override toString(): string {
    const tag = this.name === "OpsExecError" ? ` [${this.code}]` : "";
    return oneLine(`${this.name}${tag}: ${this.message}`);
  }

  /** What Deno's `console.log` and `Deno.inspect` print: {@linkcode OpsExecError.toString}. */
  [Symbol.for("Deno.customInspect")](): string {
    return this.toString();
  }

  /** What Node's `console.log` and `util.inspect` print: {@linkcode OpsExecError.toString}. */
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return this.toString();
  }
}

/** Line breaks inside a message become ` / `: an error prints as one line. */
function oneLine(text: string): string {
  return text.replace(/\s*[\r\n]+\s*/g, " / ");
}

/** Where a capability check refused an action. */
export type DenialScope = "caller" | "agent";

/** Options of {@linkcode CapabilityDenied}. */
export interface CapabilityDeniedOptions extends OpsExecErrorOptions {
  /** The path a `sync.*` action was checked against, if any. */
  path?: string;
  /** Why the action was refused, when more is known than "not granted". */
  reason?: string;
}

/**
 * An action the capability set does not grant. Thrown before any process
 * starts or any byte leaves the machine (`scope: "caller"`), or reported by
 * an agent whose host ceiling or grants refuse it (`scope: "agent"`).
 *
 * @example
 * ```ts
 * import { CapabilityDenied, CapabilitySet, LocalExec, Step } from "@makenot/ops-exec";
 *
 * const exec = new LocalExec(CapabilitySet.of("bento.build"));
 * try {
 *   await exec.runStreaming(Step.shell("bento.sign", "echo never"), { write() {} });
 * } catch (error) {
 *   if (error instanceof CapabilityDenied) console.log(error.scope, error.action);
 * }
 * ```
 */
export class CapabilityDenied extends OpsExecError {
  /** The refused action, e.g. `bento.sign`. */
  readonly action: string;
  /** The host the action was aimed at. */
  readonly host: string;
  /** Which side refused: the caller's own set, or the agent. */
  readonly scope: DenialScope;
  /** The path a `sync.*` action was checked against, if any. */
  readonly path?: string;

  /**
   * Creates a denial.
   *
   * @param action The refused action.
   * @param host The host it was aimed at.
   * @param scope Which side refused it.
   * @param options The path checked and a reason, when known.
   */
  constructor(
    action: string,
    host: string,
    scope: DenialScope,
    options?: CapabilityDeniedOptions,
  ) {
    const where = options?.path === undefined ? "" : ` on path ${options.path}`;
    const who = scope === "caller"
      ? "the caller's capability set"
      : "the agent (host ceiling or grants)";
    const why = options?.reason ? `: ${options.reason}` : "";
    super(
      "capability_denied",
      `action "${action}"${where} on host ${host} is not granted by ${who}${why}`,
      options,
    );
    this.name = "CapabilityDenied";
    this.action = action;
    this.host = host;
    this.scope = scope;
    if (options?.path !== undefined) this.path = options.path;
  }
}

/**
 * A malformed step: a bad action name, a NUL byte, a relative cwd, an unknown
 * field in JSON, and so on. `.field` names the offending field.
 *
 * @example
 * ```ts
 * import { Step, StepError } from "@makenot/ops-exec";
 *
 * try {
 *   Step.fromJSON({ action: "bento.build", kind: "exec", argv: ["true"], extra: 1 });
 * } catch (error) {
 *   if (error instanceof StepError) console.log(error.field); // "extra"
 * }
 * ```
 */
export class StepError extends OpsExecError {
  /** The field at fault, e.g. `env.PATH` or `cwd`. */
  readonly field: string;

  /**
   * Creates a step error naming the field at fault.
   *
   * @param field The field at fault.
   * @param message What is wrong with it.
   */
  constructor(field: string, message: string) {
    super("invalid_step", `step field "${field}": ${message}`);
    this.name = "StepError";
    this.field = field;
  }
}

/**
 * What went wrong below the step: the kinds a {@linkcode TransportError}
 * distinguishes so that a person (or a pipeline) can act on them.
 */
export type TransportErrorKind =
  | "unreachable"
  | "auth_refused"
  | "host_key_changed"
  | "host_key_unknown"
  | "unknown_peer"
  | "connection_lost"
  | "protocol"
  | "spawn_failed"
  | "sync_failed"
  | "timeout";

/** Options of {@linkcode TransportError}. */
export interface TransportErrorOptions extends OpsExecErrorOptions {
  /** Diagnostic output of the transport (e.g. ssh's stderr), trimmed. */
  detail?: string;
}

/**
 * The transport could not carry the step: the host is unreachable, ssh
 * refused the key, the host key changed, the agent does not know the caller,
 * the connection dropped mid-step. Never a step's own non-zero exit.
 *
 * @example
 * ```ts
 * import { TransportError } from "@makenot/ops-exec";
 *
 * const error = new TransportError("unreachable", "web-1", "connection refused");
 * console.log(error.code); // "transport_unreachable"
 * ```
 */
export class TransportError extends OpsExecError {
  /** Which failure this is. */
  readonly kind: TransportErrorKind;
  /** The host concerned. */
  readonly host: string;
  /** Diagnostic output of the transport, when there is some. */
  readonly detail?: string;

  /**
   * Creates a transport error.
   *
   * @param kind Which failure this is.
   * @param host The host concerned.
   * @param message What happened, in words a person can act on.
   * @param options The cause and diagnostic detail.
   */
  constructor(
    kind: TransportErrorKind,
    host: string,
    message: string,
    options?: TransportErrorOptions,
  ) {
    super(`transport_${kind}`, `${host}: ${message}`, options);
    this.name = "TransportError";
    this.kind = kind;
    this.host = host;
    if (options?.detail) this.detail = options.detail;
  }

  /** The error as one line: `TransportError [kind]: host: message`. */
  override toString(): string {
    return oneLine(`${this.name} [${this.kind}]: ${this.message}`);
  }
}

/**
 * A malformed configuration or grant: an unknown key, a value of the wrong
 * type, a grant that does not parse. `.key` names the key path, e.g.
 * `grant[1].allow[0]`.
 *
 * @example
 * ```ts
 * import { CapabilitySet, ConfigError } from "@makenot/ops-exec";
 *
 * try {
 *   CapabilitySet.of("Bento.Sign");
 * } catch (error) {
 *   if (error instanceof ConfigError) console.log(error.message);
 * }
 * ```
 */
export class ConfigError extends OpsExecError {
  /** The key path at fault, when the error concerns one key. */
  readonly key?: string;

  /**
   * Creates a configuration error.
   *
   * @param key The key path at fault (empty when none applies).
   * @param message What is wrong with it.
   * @param options The underlying error, when there is one.
   */
  constructor(key: string, message: string, options?: OpsExecErrorOptions) {
    super("invalid_config", key ? `${key}: ${message}` : message, options);
    this.name = "ConfigError";
    if (key) this.key = key;
  }
}
