// The part of npm:cli-progress's API the CLI uses. Declared here rather than
// taken from @types/cli-progress, which drags in all of @types/node.

/** A bar's look. */
export interface Preset {
  /** The character of the done part. */
  barCompleteChar: string;
  /** The character of the rest. */
  barIncompleteChar: string;
  /** The line's format. */
  format?: string;
}

/** Options of a MultiBar (the subset the CLI sets). */
export interface Options {
  format?: string;
  stream?: unknown;
  hideCursor?: boolean;
  clearOnComplete?: boolean;
  stopOnComplete?: boolean;
  barsize?: number;
  noTTYOutput?: boolean;
  fps?: number;
}

/** One bar of a MultiBar. */
export interface SingleBar {
  /** Sets the bar's value and its payload fields. */
  update(value: number, payload?: Record<string, unknown>): void;
}

/** Several bars redrawn together. */
export class MultiBar {
  constructor(options: Options, preset?: Preset);
  /** Adds a bar. */
  create(total: number, start: number, payload?: Record<string, unknown>): SingleBar;
  /** Stops redrawing and leaves the bars as they are. */
  stop(): void;
}

/** The shipped looks. */
export const Presets: { shades_classic: Preset };

declare const cliProgress: { MultiBar: typeof MultiBar; Presets: typeof Presets };
export default cliProgress;
