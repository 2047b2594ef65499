// The audit log's second copy, where the account the steps run as cannot
// change it: the system log (journald or a syslog daemon on Linux, through
// its socket; the unified log on macOS). One long-lived `logger` reads the
// lines on its stdin and sends each as one message, so a line is in the
// kernel's hands (the pipe) once `write` resolves, and logger still sends
// what the pipe holds if the agent is killed.

/** util-linux's and macOS's logger: the same path on both. */
export const LOGGER = "/usr/bin/logger";
/** The tag of every copied line. */
export const SYSLOG_TAG = "ops-agent";
/** authpriv: on Debian's rsyslog /var/log/auth.log, readable by root and adm only. */
const PRIORITY = "authpriv.notice";
/** The longest message sent; longer lines are cut by logger. */
const MAX_MESSAGE = 16 * 1024;
/** Bytes handed to logger and not yet taken from the pipe before lines are dropped. */
const MAX_PENDING = 1024 * 1024;
/** How long a write waits for a pipe that is full (logger stalled) before it is counted lost. */
const MAX_WAIT_MS = 1000;

/** Where the copy goes. */
export interface SystemLogOptions {
  /** Linux: the socket logger writes to (`logger --socket`), instead of /dev/log. */
  socket?: string;
}

/**
 * Whether `logger` can deliver to the system log with `opts`: resolves to
 * `null` when a test message was delivered, else to what failed.
 */
export async function probeSystemLog(opts: SystemLogOptions): Promise<string | null> {
  try {
    const out = await new Deno.Command(LOGGER, {
      args: [...loggerArgs(opts), "ops-agent starting: audit lines are copied to the system log"],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
      clearEnv: true,
      env: { PATH: "/usr/bin:/bin" },
    }).output();
    if (out.success) return null;
    const why = new TextDecoder().decode(out.stderr).trim().split("\n").at(-1);
    return `${LOGGER} exited ${out.code}${why ? `: ${why}` : ""}`;
  } catch (error) {
    return `cannot run ${LOGGER}: ${error instanceof Error ? error.message : error}`;
  }
}

function loggerArgs(opts: SystemLogOptions): string[] {
  if (Deno.build.os !== "linux") return ["-t", SYSLOG_TAG, "-p", PRIORITY];
  return [
    "-t",
    SYSLOG_TAG,
    "-p",
    PRIORITY,
    `--size=${MAX_MESSAGE}`,
    "--socket-errors=on",
    ...(opts.socket ? ["--socket", opts.socket] : []),
  ];
}

/** A long-lived `logger` fed one audit line per message. Restarted if it dies. */
export class SystemLog {
  readonly #opts: SystemLogOptions;
  #child: Deno.ChildProcess | null = null;
  #writer: WritableStreamDefaultWriter<Uint8Array> | null = null;
  #exited: string | null = null;
  #pending = 0;
  #lost = 0;
  #tail: Promise<void> = Promise.resolve();
  #closed = false;

  constructor(opts: SystemLogOptions) {
    this.#opts = opts;
  }

  /** Lines that could not be handed to logger (it was stalled or gone). */
  get lost(): number {
    return this.#lost;
  }

  /**
   * Hands one line (JSON text, newline-terminated) to logger. Resolves once
   * it is in the pipe, or after a bounded wait when logger does not read.
   */
  write(line: Uint8Array): Promise<void> {
    if (this.#closed) return Promise.resolve();
    if (this.#pending + line.length > MAX_PENDING) {
      this.#lost++;
      return Promise.resolve();
    }
    this.#pending += line.length;
    const sent = this.#tail.then(() => this.#send(line)).finally(() => {
      this.#pending -= line.length;
    });
    this.#tail = sent.catch(() => {});
    let timer: ReturnType<typeof setTimeout> | undefined;
    return Promise.race([
      sent,
      new Promise<void>((resolve) => (timer = setTimeout(resolve, MAX_WAIT_MS))),
    ]).finally(() => clearTimeout(timer));
  }

  /** Waits for the lines handed over (boundedly), then closes logger's stdin: it sends the rest and exits. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      this.#tail,
      new Promise((resolve) => (timer = setTimeout(resolve, MAX_WAIT_MS))),
    ]);
    clearTimeout(timer);
    await this.#writer?.close().catch(() => {});
    if (this.#child) {
      await Promise.race([
        this.#child.status,
        new Promise((resolve) => (timer = setTimeout(resolve, MAX_WAIT_MS))),
      ]);
      clearTimeout(timer);
    }
  }

  async #send(line: Uint8Array): Promise<void> {
    if (this.#exited !== null || this.#writer === null) this.#start();
    try {
      await this.#writer!.write(line);
    } catch {
      // logger died between the check and the write: once more, with a new one.
      this.#start();
      await this.#writer!.write(line).catch(() => void this.#lost++);
    }
  }

  #start(): void {
    const previous = this.#exited;
    this.#child = new Deno.Command(LOGGER, {
      args: loggerArgs(this.#opts),
      stdin: "piped",
      stdout: "null",
      stderr: "piped",
      clearEnv: true,
      env: { PATH: "/usr/bin:/bin" },
    }).spawn();
    this.#exited = null;
    const child = this.#child;
    child.status.then((status) => {
      if (this.#child === child) {
        this.#exited = status.signal ? `killed by ${status.signal}` : `exit ${status.code}`;
      }
    });
    void reportErrors(child.stderr);
    this.#writer = child.stdin.getWriter();
    if (previous !== null) {
      const note = {
        time: new Date().toISOString(),
        event: "system_log_restarted",
        reason: `logger had ended (${previous}); lines written meanwhile may be missing here`,
        lost: this.#lost,
      };
      void this.#writer.write(new TextEncoder().encode(`${JSON.stringify(note)}\n`)).catch(
        () => {},
      );
    }
  }
}

/** logger's complaints (a socket gone) reach the agent's own output, a few at most per minute. */
async function reportErrors(stream: ReadableStream<Uint8Array>): Promise<void> {
  let window = 0;
  let count = 0;
  try {
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      const now = Date.now();
      if (now - window > 60_000) [window, count] = [now, 0];
      if (++count <= 5) console.error(`ops-agent: system log: ${chunk.trim()}`);
    }
  } catch {
    // logger is gone.
  }
}
