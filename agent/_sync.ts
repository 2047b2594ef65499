// The agent's side of push/pull: which `rsync --server` argument vectors it
// accepts, and the tunnel that runs `rsync --server` with a WebSocket as its
// stdin/stdout (where it may reach: _sync_confine.ts).

import { normalizeRoot } from "../capability/path.ts";
import { baseEnvironment } from "../executor/_env.ts";
import { type ProcessResult, runProcess } from "../executor/_spawn.ts";
import type { LogLine } from "../executor/types.ts";
import { SYNC_MESSAGE_BYTES, SYNC_WINDOW_BYTES } from "../transports/_agent_protocol.ts";
import type { RsyncFlavour } from "../transports/_agent_protocol.ts";
import { askRsyncVersion } from "../transports/_rsync_flavour.ts";

/**
 * What the agent's rsync (`program`) is, from its `--version`; `null` (with
 * a warning on stderr) when it cannot run it or does not know its words.
 */
export async function agentRsync(program: string): Promise<RsyncFlavour | null> {
  try {
    const answer = await askRsyncVersion(program);
    if (answer.flavour) return answer.flavour;
    console.error(
      `ops-agent: warning: ${program} --version exited ${answer.exitCode} ` +
        `without naming rsync or openrsync; /v1/sync will fail: ${answer.text.slice(0, 200)}`,
    );
  } catch (error) {
    console.error(`ops-agent: warning: cannot run ${program}; /v1/sync will fail: ${error}`);
  }
  return null;
}

/** What a valid `rsync --server` vector asks for. */
export interface SyncRequest {
  /** `sync.pull` when the agent's rsync sends (`--sender`), `sync.push` when it receives. */
  action: "sync.push" | "sync.pull";
  /** The target path as the client gave it, normalised (`..` resolved lexically). */
  path: string;
  /** The vector without the path: `rsync --server [--sender] -flags [--long...] .` */
  argv: string[];
  /** Whether the client's path ended with a slash (rsync's "contents of"). */
  trailingSlash: boolean;
}

/** A vector the agent will not run; the message says which word and why. */
export class RsyncArgvError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RsyncArgvError";
  }
}

/**
 * The single-letter options a client's `rsync --server` vector may carry:
 * those of ops-exec's own push/pull (rlptgo, `--archive` without D; n for
 * dryRun, c for checksum, z for compress, v for verbose). Everything else is
 * refused: among them D (device files and fifos), L, k, K (follow links out
 * of the root), s (moves the options into the data stream, past this check),
 * R, b, and every option that takes a program, a file or a directory
 * elsewhere.
 */
const SHORT_OPTIONS = new Set("rlptgonczv");
/** Long options an rsync 3.x vector may carry after the short group. */
const LONG_OPTIONS = new Set(["--delete", "--stats", "--mkpath"]);
/** rsync's protocol-capability letters after `e.` (they select protocol features, run nothing). */
const CAPABILITIES = /^[A-Za-z]*$/;
/**
 * The words an openrsync vector may carry, each on its own and at most once:
 * the letters above as separate options, how openrsync (and Apple's fork)
 * send `--delete` (to the sender too, where it deletes nothing), Apple's
 * `--progress` (display only; a server prints none), and `--mkpath`, which
 * ops-exec's tunnel adds for a receiver that knows it.
 */
const OPENRSYNC_WORDS = new Set([
  ...[...SHORT_OPTIONS].map((letter) => `-${letter}`),
  "--delete",
  "--delete-before",
  "--progress",
  "--mkpath",
]);

/**
 * Checks a client's `rsync --server` vector against the allowlist. Two
 * shapes are genuine:
 *
 * - rsync 3.x: `rsync --server [--sender] -<flags>e.<caps> [--delete] [--stats] [--mkpath] . PATH`;
 * - openrsync (the open-source one and Apple's): `rsync --server [--sender]
 *   [--delete-before|--delete] [-c] -g -l [-n] -o -p -r -t [-z] . PATH`,
 *   one option per word.
 *
 * @param value The `argv` query parameter: a JSON array of strings.
 * @throws {RsyncArgvError} When it is not a genuine, allowed vector.
 */
export function parseSyncRequest(value: string | undefined): SyncRequest {
  if (!value) {
    throw new RsyncArgvError("the argv query parameter (the rsync --server vector) is missing");
  }
  let argv: unknown;
  try {
    argv = JSON.parse(value);
  } catch {
    throw new RsyncArgvError("argv is not JSON");
  }
  if (!Array.isArray(argv) || !argv.every((word) => typeof word === "string")) {
    throw new RsyncArgvError("argv must be a JSON array of strings");
  }
  const words = argv as string[];
  if (words.some((word) => word.includes("\0") || word.includes("\n"))) {
    throw new RsyncArgvError("argv holds a NUL or newline");
  }
  if (words[0] !== "rsync" || words[1] !== "--server") {
    throw new RsyncArgvError(
      `only "rsync --server ..." runs here, not ${JSON.stringify(words.slice(0, 2).join(" "))}`,
    );
  }
  let i = 2;
  const sender = words[i] === "--sender";
  if (sender) i++;
  const options = /^-[A-Za-z]*e\./.test(words[i] ?? "")
    ? rsync3Options(words, i, sender)
    : openrsyncOptions(words, i, sender);
  i += options.length;
  if (words[i] !== "." || words.length !== i + 2) {
    throw new RsyncArgvError(
      `expected ". PATH" at the end of the vector, got ${JSON.stringify(words.slice(i))}`,
    );
  }
  const target = words[i + 1];
  if (!target.startsWith("/")) {
    throw new RsyncArgvError(`the path must be absolute, got ${JSON.stringify(target)}`);
  }
  return {
    action: sender ? "sync.pull" : "sync.push",
    path: normalizeRoot(target),
    argv: ["--server", ...(sender ? ["--sender"] : []), ...options, "."],
    trailingSlash: target.endsWith("/") && target !== "/",
  };
}

/** The options of an rsync 3.x vector from `words[start]` (its `-<flags>e.<caps>` group) on. */
function rsync3Options(words: readonly string[], start: number, sender: boolean): string[] {
  const flags = words[start];
  const match = /^-([A-Za-z]+)e\.([A-Za-z]*)$/.exec(flags);
  if (!match || !CAPABILITIES.test(match[2])) {
    throw new RsyncArgvError(
      `expected rsync's option group (like -logtpre.iLsfxCIvu) after --server, got ${
        JSON.stringify(flags)
      }`,
    );
  }
  const refused = [...match[1]].filter((letter) => !SHORT_OPTIONS.has(letter));
  if (refused.length > 0) throw new RsyncArgvError(`refused rsync option(s) -${refused.join("")}`);
  const options = [flags];
  for (let i = start + 1; i < words.length && words[i].startsWith("-"); i++) {
    const option = words[i];
    if (!LONG_OPTIONS.has(option)) throw new RsyncArgvError(`refused rsync option ${option}`);
    if (sender && option === "--delete") {
      throw new RsyncArgvError("--delete is the receiver's option, not the sender's");
    }
    options.push(option);
  }
  return options;
}

/** The options of an openrsync vector from `words[start]` on: allowed words, each once. */
function openrsyncOptions(words: readonly string[], start: number, sender: boolean): string[] {
  const options: string[] = [];
  for (let i = start; i < words.length && words[i].startsWith("-"); i++) {
    const option = words[i];
    if (!OPENRSYNC_WORDS.has(option)) {
      const refused = /^-[A-Za-z]{2,}$/.test(option)
        ? [...option.slice(1)].filter((letter) => !SHORT_OPTIONS.has(letter))
        : [];
      throw new RsyncArgvError(
        refused.length > 0
          ? `refused rsync option(s) -${refused.join("")} (in ${option})`
          : /^-[A-Za-z]{2,}$/.test(option)
          ? `refused rsync option ${option}: openrsync sends one option per word`
          : `refused rsync option ${option}`,
      );
    }
    if (options.includes(option)) throw new RsyncArgvError(`rsync option ${option} given twice`);
    if (sender && option === "--mkpath") {
      throw new RsyncArgvError("--mkpath is the receiver's option, not the sender's");
    }
    options.push(option);
  }
  return options;
}

/** How a tunnelled transfer ended. */
export interface TunnelResult {
  /** rsync's result (undefined when it could not start). */
  result?: ProcessResult;
  /** Why it could not start or ended early. */
  failure?: unknown;
  /** Bytes from the client into rsync. */
  bytesIn: number;
  /** Bytes from rsync to the client. */
  bytesOut: number;
  /** rsync's last stderr lines. */
  stderr: string[];
  /** Why the agent cut the client off (it ignored the upload window), if it did. */
  violation?: string;
}

/** Options of {@linkcode runSyncTunnel}. */
export interface TunnelOptions {
  /** Ends the transfer (rsync's group is killed). */
  signal: AbortSignal;
}

/** Unacknowledged bytes a client may have in flight; the agent acks every ACK_EVERY bytes. */
export const ACK_EVERY = 1024 * 1024;
/** Bytes the agent lets queue on the socket before it stops reading rsync's stdout. */
const SEND_HIGH_WATER = 8 * 1024 * 1024;
/**
 * Bytes of the client's stream that may wait for rsync: its window, and one
 * message of slack (earlier tunnels reserved the window before adding a
 * message, not after).
 */
const UPLOAD_LIMIT = SYNC_WINDOW_BYTES + SYNC_MESSAGE_BYTES;

/**
 * Runs `rsync` with `argv` through the shared spawn core, with the WebSocket
 * as its stdin and stdout. Binary messages are rsync's bytes both ways; text
 * messages from the client: `{"eof":true}`; to the client: `{"ack":N}` (bytes
 * of its stream written to rsync so far, for its flow control),
 * `{"stderr":"..."}`, and last `{"exit":N,"signal":S}`. Closing the socket
 * (either way) ends rsync.
 *
 * The agent holds at most UPLOAD_LIMIT of the client's stream that rsync has
 * not taken yet (more than a client keeping to the acks can have sent), and
 * no message over SYNC_MESSAGE_BYTES: a client past either is cut off (close
 * 4008) and its rsync ended, so memory stays bounded whatever it sends.
 */
export function runSyncTunnel(
  socket: WebSocket,
  argv: string[],
  opts: TunnelOptions,
): Promise<TunnelResult> {
  socket.binaryType = "arraybuffer";
  const abort = new AbortController();
  const stop = () => abort.abort();
  opts.signal.addEventListener("abort", stop, { once: true });
  const tail: string[] = [];
  let bytesIn = 0;
  let bytesOut = 0;
  let acked = 0;
  let violation: string | undefined;

  const queue: Uint8Array[] = [];
  let queued = 0;
  let wake: (() => void) | null = null;
  let ended = false;
  const notify = () => {
    wake?.();
    wake = null;
  };
  const stdin = new ReadableStream<Uint8Array>({
    async pull(controller) {
      while (queue.length === 0 && !ended) await new Promise<void>((r) => (wake = r));
      const chunk = queue.shift();
      if (!chunk) return controller.close();
      queued -= chunk.length;
      bytesIn += chunk.length;
      if (bytesIn - acked >= ACK_EVERY) {
        acked = bytesIn;
        send(JSON.stringify({ ack: acked }));
      }
      controller.enqueue(chunk);
    },
  }, { highWaterMark: 0 });

  const send = (data: string | Uint8Array) => {
    if (socket.readyState === WebSocket.OPEN) socket.send(data);
  };
  socket.onmessage = (event) => {
    if (typeof event.data === "string") {
      if (event.data.includes('"eof"')) {
        ended = true;
        notify();
      }
      return;
    }
    if (violation !== undefined) return;
    const chunk = new Uint8Array(event.data as ArrayBuffer);
    queued += chunk.length;
    if (chunk.length > SYNC_MESSAGE_BYTES || queued > UPLOAD_LIMIT) {
      cutOff(
        chunk.length > SYNC_MESSAGE_BYTES
          ? `the client sent a message of ${chunk.length} bytes (at most ${SYNC_MESSAGE_BYTES})`
          : `the client sent ${queued} bytes that rsync has not taken yet (its window is ${SYNC_WINDOW_BYTES} bytes beyond the agent's last ack)`,
      );
      return;
    }
    queue.push(chunk);
    notify();
  };
  // Drops what is queued, ends rsync and the connection.
  const cutOff = (why: string) => {
    violation = why;
    queue.length = 0;
    queued = 0;
    ended = true;
    notify();
    send(JSON.stringify({ stderr: `ops-agent: transfer ended: ${why}` }));
    socket.close(4008, "upload window exceeded");
    stop();
  };
  const opened = new Promise<void>((resolve) => {
    if (socket.readyState === WebSocket.OPEN) resolve();
    socket.onopen = () => resolve();
  });
  socket.onclose = () => {
    ended = true;
    notify();
    stop();
  };
  socket.onerror = () => stop();

  const sink = {
    write(line: LogLine) {
      tail.push(line.text);
      if (tail.length > 20) tail.shift();
      send(JSON.stringify({ stderr: line.text }));
    },
  };
  const stdoutBytes = async (chunk: Uint8Array) => {
    bytesOut += chunk.length;
    send(chunk);
    // The client reads slowly: stop reading rsync until the socket drains.
    while (socket.bufferedAmount > SEND_HIGH_WATER && socket.readyState === WebSocket.OPEN) {
      await new Promise((r) => setTimeout(r, 5));
    }
  };

  return (async (): Promise<TunnelResult> => {
    await Promise.race([opened, new Promise((r) => abort.signal.addEventListener("abort", r))]);
    try {
      const result = await runProcess({
        argv,
        env: baseEnvironment(),
        stdin,
        stdoutBytes,
        killGraceMs: 2000,
        signal: abort.signal,
      }, sink);
      send(JSON.stringify({ exit: result.exitCode ?? 255, signal: result.signal }));
      return { result, bytesIn, bytesOut, stderr: tail, violation };
    } catch (failure) {
      send(JSON.stringify({ stderr: `ops-agent: cannot run rsync: ${failure}` }));
      send(JSON.stringify({ exit: 255, signal: null }));
      return { failure, bytesIn, bytesOut, stderr: tail, violation };
    } finally {
      opts.signal.removeEventListener("abort", stop);
      if (socket.readyState === WebSocket.OPEN) socket.close(1000, "done");
    }
  })();
}
