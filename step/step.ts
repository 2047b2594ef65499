import { StepError } from "../executor/errors.ts";
import { printable, typeName } from "../executor/_describe.ts";
import { type Action, parseStepAction } from "./action.ts";

/** The options every step may carry. */
export interface StepOptions {
  /**
   * Absolute working directory on the target host. Default, on every
   * transport: the home directory of the account the step runs as (yours
   * for LocalExec, the remote account's over ssh, the agent's account for
   * AgentRpc), or `/` when it has none on disk.
   */
  cwd?: string;
  /** Variables added to the base environment (names `[A-Za-z_][A-Za-z0-9_]*`). */
  env?: Record<string, string>;
  /** Bytes (or UTF-8 text) written to the step's stdin; stdin is empty otherwise. */
  stdin?: string | Uint8Array;
  /** Kill the step's process group after this many milliseconds. */
  timeoutMs?: number;
  /** Time between SIGTERM and SIGKILL on timeout or cancel. Default 5000. */
  killGraceMs?: number;
  /** A human label for logs and the audit trail. */
  label?: string;
}

/** How a step runs: a shell script under `/bin/sh -c`, or an argv without a shell. */
export type StepKind = "shell" | "exec";

/**
 * The wire form of a {@linkcode Step}, as `toJSON()` writes it and
 * `Step.fromJSON()` reads it. `stdinBase64` carries stdin as base64.
 */
export interface StepJSON {
  /** The action the step is gated on. */
  action: Action;
  /** `shell` (with `script`) or `exec` (with `argv`). */
  kind: StepKind;
  /** The shell script, for `kind: "shell"`. */
  script?: string;
  /** The program and its arguments, for `kind: "exec"`. */
  argv?: string[];
  /** Absolute working directory. */
  cwd?: string;
  /** Extra environment variables. */
  env?: Record<string, string>;
  /** Stdin as base64. */
  stdinBase64?: string;
  /** Timeout in milliseconds. */
  timeoutMs?: number;
  /** Grace between SIGTERM and SIGKILL in milliseconds. */
  killGraceMs?: number;
  /** A human label. */
  label?: string;
}

/** The default grace between SIGTERM and SIGKILL. */
export const DEFAULT_KILL_GRACE_MS = 5000;
/** The largest timer JavaScript can set (about 24.8 days). */
const MAX_TIMER_MS = 2 ** 31 - 1;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const MAX_LABEL_LENGTH = 256;
const SHELL = "/bin/sh";

const JSON_FIELDS = new Set<string>([
  "action",
  "kind",
  "script",
  "argv",
  "cwd",
  "env",
  "stdinBase64",
  "timeoutMs",
  "killGraceMs",
  "label",
]);
const OPTION_FIELDS = new Set<string>([
  "cwd",
  "env",
  "stdin",
  "timeoutMs",
  "killGraceMs",
  "label",
]);

/**
 * A typed, validated unit of work: an {@linkcode Action} name the capability
 * check gates on, and the command that runs under it. Steps are immutable and
 * validated when built, so a malformed step never reaches a transport.
 *
 * @example A shell step and an argv step
 * ```ts
 * import { Step } from "@makenot/ops-exec";
 *
 * const build = Step.shell("bento.build", "set -e; echo building", {
 *   cwd: "/tmp",
 *   env: { MODE: "release" },
 *   timeoutMs: 60_000,
 * });
 * const sign = Step.exec("bento.sign", ["echo", "signing"]);
 * console.log(build.action, sign.argv);
 * ```
 */
export class Step {
  /** The action the step is gated on. */
  readonly action: Action;
  /** `shell` or `exec`. */
  readonly kind: StepKind;
  /** The script, for shell steps. */
  readonly script?: string;
  /** The argv that runs: `[/bin/sh, -c, script]` for shell steps. */
  readonly argv: readonly string[];
  /** Absolute working directory, if set (else the account's home: see {@linkcode StepOptions.cwd}). */
  readonly cwd?: string;
  /** Extra environment variables (frozen). */
  readonly env: Readonly<Record<string, string>>;
  /** Stdin bytes, if any. */
  readonly stdin?: Uint8Array;
  /** Timeout in milliseconds, if any. */
  readonly timeoutMs?: number;
  /** Grace between SIGTERM and SIGKILL. */
  readonly killGraceMs: number;
  /** A human label, if any. */
  readonly label?: string;

  private constructor(
    action: Action,
    kind: StepKind,
    body: string | readonly string[],
    opts: StepOptions,
  ) {
    this.action = action;
    this.kind = kind;
    if (kind === "shell") {
      this.script = body as string;
      this.argv = Object.freeze([SHELL, "-c", body as string]);
    } else {
      this.argv = Object.freeze([...body]);
    }
    if (opts.cwd !== undefined) this.cwd = opts.cwd;
    this.env = Object.freeze({ ...opts.env });
    if (opts.stdin !== undefined) {
      this.stdin = typeof opts.stdin === "string"
        ? new TextEncoder().encode(opts.stdin)
        : opts.stdin.slice();
    }
    if (opts.timeoutMs !== undefined) this.timeoutMs = opts.timeoutMs;
    this.killGraceMs = opts.killGraceMs ?? DEFAULT_KILL_GRACE_MS;
    if (opts.label !== undefined) this.label = opts.label;
    Object.freeze(this);
  }

  /**
   * A step that runs `script` with `/bin/sh -c`.
   *
   * @example
   * ```ts
   * import { Step } from "@makenot/ops-exec";
   *
   * const step = Step.shell("sando.promote", "set -e; ./promote.sh canary");
   * ```
   *
   * @param action The action the step is gated on.
   * @param script The POSIX shell script.
   * @param opts cwd, env, stdin, timeout, grace and label.
   * @returns The validated step.
   * @throws {StepError} When any part is malformed.
   */
  static shell(action: Action, script: string, opts?: StepOptions): Step {
    const name = parseStepAction(action);
    checkText("script", script, { nonEmpty: true });
    return new Step(name, "shell", script, checkOptions(opts ?? {}));
  }

  /**
   * A step that runs `argv[0]` with the remaining arguments, no shell.
   *
   * @example
   * ```ts
   * import { Step } from "@makenot/ops-exec";
   *
   * const step = Step.exec("bento.sign", ["codesign", "--sign", "Developer ID", "App.app"]);
   * ```
   *
   * @param action The action the step is gated on.
   * @param argv The program and its arguments.
   * @param opts cwd, env, stdin, timeout, grace and label.
   * @returns The validated step.
   * @throws {StepError} When any part is malformed.
   */
  static exec(action: Action, argv: readonly string[], opts?: StepOptions): Step {
    const name = parseStepAction(action);
    checkArgv(argv);
    return new Step(name, "exec", argv, checkOptions(opts ?? {}));
  }

  /**
   * Reads a step from its wire form, strictly: unknown fields, wrong types,
   * bad action names, NUL bytes, a relative cwd and invalid env names are
   * refused with a {@linkcode StepError} naming the field.
   *
   * @example
   * ```ts
   * import { Step } from "@makenot/ops-exec";
   *
   * const step = Step.fromJSON({ action: "bento.build", kind: "exec", argv: ["true"] });
   * ```
   *
   * @param value A parsed JSON value.
   * @returns The validated step.
   * @throws {StepError} When the value is not a well-formed step.
   */
  static fromJSON(value: unknown): Step {
    if (!isPlainObject(value)) {
      throw new StepError("(root)", `must be an object, got ${typeName(value)}`);
    }
    for (const key of Object.keys(value)) {
      if (!JSON_FIELDS.has(key)) {
        throw new StepError(printable(key), "unknown field");
      }
    }
    const action = parseStepAction(value.action);
    const opts: StepOptions = {};
    if (value.cwd !== undefined) opts.cwd = value.cwd as string;
    if (value.env !== undefined) opts.env = value.env as Record<string, string>;
    if (value.timeoutMs !== undefined) opts.timeoutMs = value.timeoutMs as number;
    if (value.killGraceMs !== undefined) {
      opts.killGraceMs = value.killGraceMs as number;
    }
    if (value.label !== undefined) opts.label = value.label as string;
    if (value.stdinBase64 !== undefined) {
      opts.stdin = decodeBase64("stdinBase64", value.stdinBase64);
    }
    checkOptions(opts);
    if (value.kind === "shell") {
      if (value.argv !== undefined) {
        throw new StepError("argv", 'not allowed with kind "shell" (use "script")');
      }
      checkText("script", value.script, { nonEmpty: true });
      return new Step(action, "shell", value.script as string, opts);
    }
    if (value.kind === "exec") {
      if (value.script !== undefined) {
        throw new StepError("script", 'not allowed with kind "exec" (use "argv")');
      }
      checkArgv(value.argv);
      return new Step(action, "exec", value.argv as string[], opts);
    }
    throw new StepError(
      "kind",
      `must be "shell" or "exec", got ${
        typeof value.kind === "string" ? `"${printable(value.kind)}"` : typeName(value.kind)
      }`,
    );
  }

  /**
   * The wire form, suitable for `JSON.stringify` and `Step.fromJSON`.
   *
   * @returns A plain object with only the fields that are set.
   */
  toJSON(): StepJSON {
    const json: StepJSON = { action: this.action, kind: this.kind };
    if (this.kind === "shell") json.script = this.script;
    else json.argv = [...this.argv];
    if (this.cwd !== undefined) json.cwd = this.cwd;
    if (Object.keys(this.env).length > 0) json.env = { ...this.env };
    if (this.stdin !== undefined) json.stdinBase64 = encodeBase64(this.stdin);
    if (this.timeoutMs !== undefined) json.timeoutMs = this.timeoutMs;
    if (this.killGraceMs !== DEFAULT_KILL_GRACE_MS) {
      json.killGraceMs = this.killGraceMs;
    }
    if (this.label !== undefined) json.label = this.label;
    return json;
  }

  /**
   * A one-line description for logs: the label, or the action and command.
   *
   * @returns A short human-readable description.
   */
  describe(): string {
    if (this.label) return `${this.action} (${this.label})`;
    const command = this.kind === "shell" ? this.script! : this.argv.join(" ");
    return `${this.action}: ${printable(command, 60)}`;
  }
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return false;
  }
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

function checkText(
  field: string,
  value: unknown,
  opts: { nonEmpty?: boolean; max?: number } = {},
): asserts value is string {
  if (typeof value !== "string") {
    throw new StepError(field, `must be a string, got ${typeName(value)}`);
  }
  if (value.includes("\0")) throw new StepError(field, "contains a NUL byte");
  if (opts.nonEmpty && value.length === 0) {
    throw new StepError(field, "must not be empty");
  }
  if (opts.max !== undefined && value.length > opts.max) {
    throw new StepError(field, `is longer than ${opts.max} characters`);
  }
}

function checkArgv(argv: unknown): asserts argv is string[] {
  if (!Array.isArray(argv)) {
    throw new StepError("argv", `must be an array of strings, got ${typeName(argv)}`);
  }
  if (argv.length === 0) {
    throw new StepError("argv", "must name a program (argv[0])");
  }
  argv.forEach((arg, i) => checkText(`argv[${i}]`, arg, { nonEmpty: i === 0 }));
}

function checkOptions(opts: StepOptions): StepOptions {
  if (!isPlainObject(opts)) {
    throw new StepError("(options)", `must be an object, got ${typeName(opts)}`);
  }
  for (const key of Object.keys(opts)) {
    if (!OPTION_FIELDS.has(key)) {
      throw new StepError(printable(key), "unknown option");
    }
  }
  if (opts.cwd !== undefined) {
    checkText("cwd", opts.cwd, { nonEmpty: true });
    if (!opts.cwd.startsWith("/")) {
      throw new StepError("cwd", `must be an absolute path, got "${printable(opts.cwd)}"`);
    }
  }
  if (opts.env !== undefined) checkEnv(opts.env);
  if (opts.stdin !== undefined) {
    if (typeof opts.stdin !== "string" && !(opts.stdin instanceof Uint8Array)) {
      throw new StepError("stdin", `must be a string or bytes, got ${typeName(opts.stdin)}`);
    }
  }
  if (opts.timeoutMs !== undefined) {
    checkMilliseconds("timeoutMs", opts.timeoutMs, 1);
  }
  if (opts.killGraceMs !== undefined) {
    checkMilliseconds("killGraceMs", opts.killGraceMs, 0);
  }
  if (opts.label !== undefined) {
    checkText("label", opts.label, { max: MAX_LABEL_LENGTH });
  }
  return opts;
}

function checkEnv(env: unknown): void {
  if (!isPlainObject(env)) {
    throw new StepError("env", `must be an object of strings, got ${typeName(env)}`);
  }
  for (const [name, value] of Object.entries(env)) {
    if (!ENV_NAME.test(name)) {
      throw new StepError(
        `env.${printable(name)}`,
        "is not a portable variable name ([A-Za-z_][A-Za-z0-9_]*)",
      );
    }
    checkText(`env.${name}`, value);
  }
}

function checkMilliseconds(field: string, value: unknown, min: number): void {
  if (typeof value !== "number" || !Number.isInteger(value)) {
    throw new StepError(field, `must be an integer number of milliseconds, got ${typeName(value)}`);
  }
  if (value < min || value > MAX_TIMER_MS) {
    throw new StepError(field, `must be between ${min} and ${MAX_TIMER_MS}, got ${value}`);
  }
}

function encodeBase64(bytes: Uint8Array): string {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

function decodeBase64(field: string, value: unknown): Uint8Array {
  if (typeof value !== "string") {
    throw new StepError(field, `must be a base64 string, got ${typeName(value)}`);
  }
  let binary: string;
  try {
    binary = atob(value);
  } catch {
    throw new StepError(field, "is not valid base64");
  }
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}
