import { StepError } from "../executor/errors.ts";
import { printable, typeName } from "../executor/_describe.ts";

/**
 * An action name: lowercase, dotted, e.g. `bento.sign` or `sando.promote`.
 * Capability grants are written against these names.
 */
export type Action = string;

const ACTION_PATTERN = /^[a-z][a-z0-9_-]*(?:\.[a-z][a-z0-9_-]*)*$/;

/** The longest action name accepted. */
export const MAX_ACTION_LENGTH = 128;

/**
 * Actions the library itself performs. A step may not carry one of these
 * names (nor one below `observe.` or `sync.`): otherwise a grant of `observe`
 * would let a step run any command under that name.
 */
export const RESERVED_ACTIONS: readonly Action[] = Object.freeze([
  "observe",
  "sync.push",
  "sync.pull",
]);

const RESERVED_NAMESPACES = ["observe", "sync"];

/**
 * Whether `name` follows the action grammar: segments of `[a-z][a-z0-9_-]*`
 * joined by dots, at most {@linkcode MAX_ACTION_LENGTH} characters.
 *
 * @example
 * ```ts
 * import { isActionName } from "@makenot/ops-exec";
 *
 * isActionName("bento.sign"); // true
 * isActionName("Bento.Sign"); // false
 * ```
 *
 * @param name The candidate name.
 * @returns `true` when the name is well formed.
 */
export function isActionName(name: unknown): name is Action {
  return typeof name === "string" && name.length <= MAX_ACTION_LENGTH &&
    ACTION_PATTERN.test(name);
}

/**
 * Whether `action` belongs to the library (`observe`, `sync.push`,
 * `sync.pull`, or anything below `observe.` or `sync.`).
 *
 * @example
 * ```ts
 * import { isReservedAction } from "@makenot/ops-exec";
 *
 * isReservedAction("sync.push"); // true
 * isReservedAction("bento.sign"); // false
 * ```
 *
 * @param action A well-formed action name.
 * @returns `true` when a step may not use it.
 */
export function isReservedAction(action: Action): boolean {
  return RESERVED_NAMESPACES.some((ns) => action === ns || action.startsWith(`${ns}.`));
}

/**
 * Checks that `value` can name a step's action and returns it.
 *
 * @param value The candidate.
 * @param field The field name reported in the error.
 * @returns The action name.
 * @throws {StepError} When the name is malformed or reserved.
 */
export function parseStepAction(value: unknown, field = "action"): Action {
  if (typeof value !== "string") {
    throw new StepError(field, `must be a string, got ${typeName(value)}`);
  }
  if (!isActionName(value)) {
    throw new StepError(
      field,
      `"${
        printable(value)
      }" is not an action name: use lowercase dotted segments like "bento.sign" (each [a-z][a-z0-9_-]*, at most ${MAX_ACTION_LENGTH} characters)`,
    );
  }
  if (isReservedAction(value)) {
    throw new StepError(
      field,
      `"${value}" is reserved for the library (observe, sync.push, sync.pull); name the step after what it does`,
    );
  }
  return value;
}
