/**
 * Steps: the typed unit of work, and the action names capability grants are
 * written against.
 *
 * @module
 */
export {
  DEFAULT_KILL_GRACE_MS,
  Step,
  type StepJSON,
  type StepKind,
  type StepOptions,
} from "./step.ts";
export {
  type Action,
  isActionName,
  isReservedAction,
  MAX_ACTION_LENGTH,
  RESERVED_ACTIONS,
} from "./action.ts";
