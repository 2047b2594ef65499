// A small WebSocket client (RFC 6455) over node:net. Deno's own WebSocket
// cannot bind a local address, and the agent identifies its caller by the
// source address of the connection, so the sync tunnel speaks the protocol
// itself: the opening handshake, masked frames out, unmasked frames in,
// ping/pong and close. Messages are binary (Uint8Array) or text (string).

import type { Buffer } from "node:buffer";
import net from "node:net";
import { concat } from "../executor/_bytes.ts";

/** Options of {@linkcode WsClient.connect}. */
export interface WsClientOptions {
  /** The local (source) address to bind. */
  localAddress?: string;
  /** Extra request headers of the opening handshake. */
  headers?: Record<string, string>;
  /** Give up on the connection and handshake after this many milliseconds. Default 10 000. */
  timeoutMs?: number;
}

/** Why a handshake failed: the HTTP status and body the server answered with. */
export class WsHandshakeError extends Error {
  /** The HTTP status (0 when the connection itself failed). */
  readonly status: number;
  /** The response body, if any (e.g. the agent's JSON error). */
  readonly body: string;

  /**
   * @param status The HTTP status, or 0.
   * @param body The response body.
   * @param message What happened.
   * @param cause The underlying error.
   */
  constructor(status: number, body: string, message: string, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "WsHandshakeError";
    this.status = status;
    this.body = body;
  }
}

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A connected WebSocket. */
export class WsClient {
  readonly #socket: net.Socket;
  readonly #messages: ReadableStream<Uint8Array | string>;
  #closed = false;

  private constructor(socket: net.Socket, rest: Uint8Array) {
    this.#socket = socket;
    this.#messages = frameReader(socket, rest, (frame) => this.#writeFrame(frame));
  }

  /**
   * Opens a WebSocket to `url` (`ws://` or `http://`).
   *
   * @throws {WsHandshakeError} When the connection fails or the server does not upgrade.
   */
  static async connect(url: string, opts: WsClientOptions = {}): Promise<WsClient> {
    const target = new URL(url);
    const port = Number(target.port || 80);
    const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
    const socket = await openSocket(target.hostname.replace(/^\[|\]$/g, ""), port, opts);
    socket.setNoDelay(true);
    const headers = {
      Host: target.host,
      Upgrade: "websocket",
      Connection: "Upgrade",
      "Sec-WebSocket-Key": key,
      "Sec-WebSocket-Version": "13",
      ...opts.headers,
    };
    const request = `GET ${target.pathname}${target.search} HTTP/1.1\r\n` +
      Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join("") + "\r\n";
    socket.write(request);
    const { head, rest } = await readHead(socket, opts.timeoutMs ?? 10_000);
    const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0);
    if (status !== 101) {
      const body = await readBody(socket, head, rest);
      socket.destroy();
      throw new WsHandshakeError(
        status,
        body,
        `the server answered ${status || "garbage"} instead of upgrading`,
      );
    }
    const accept = /\r\nsec-websocket-accept:\s*(\S+)/i.exec(head)?.[1];
    if (accept !== await acceptFor(key)) {
      socket.destroy();
      throw new WsHandshakeError(status, "", "the server's Sec-WebSocket-Accept does not match");
    }
    return new WsClient(socket, rest);
  }

  /** Incoming messages: `Uint8Array` for binary, `string` for text. Ends when the connection closes. */
  get messages(): ReadableStream<Uint8Array | string> {
    return this.#messages;
  }

  /** Sends one message; resolves once the socket has taken it (backpressure). */
  send(message: Uint8Array | string): Promise<void> {
    const text = typeof message === "string";
    return this.#writeFrame({
      opcode: text ? 1 : 2,
      payload: text ? encoder.encode(message) : message,
    });
  }

  /** Sends a close frame and ends the connection. Idempotent. */
  async close(code = 1000, reason = ""): Promise<void> {
    if (this.#closed) return;
    const body = new Uint8Array(2 + encoder.encode(reason).length);
    new DataView(body.buffer).setUint16(0, code);
    body.set(encoder.encode(reason), 2);
    await this.#writeFrame({ opcode: 8, payload: body }).catch(() => {});
    this.#closed = true;
    this.#socket.end();
  }

  /** Drops the connection without a close frame (as a killed process would). */
  destroy(): void {
    this.#closed = true;
    this.#socket.destroy();
  }

  #writeFrame(frame: { opcode: number; payload: Uint8Array }): Promise<void> {
    if (this.#closed || this.#socket.destroyed) {
      return Promise.reject(new Error("the WebSocket is closed"));
    }
    const bytes = encodeFrame(frame.opcode, frame.payload);
    return new Promise((resolve, reject) => {
      const ok = this.#socket.write(bytes, (error) => (error ? reject(error) : undefined));
      if (ok) return resolve();
      // Waiting for the buffer to drain: a connection that closes first never drains.
      const drained = () => {
        this.#socket.off("close", closed);
        resolve();
      };
      const closed = () => {
        this.#socket.off("drain", drained);
        reject(new Error("the WebSocket closed before the message was sent"));
      };
      this.#socket.once("drain", drained);
      this.#socket.once("close", closed);
    });
  }
}

function openSocket(host: string, port: number, opts: WsClientOptions): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port, localAddress: opts.localAddress });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new WsHandshakeError(0, "", `connecting to ${host}:${port} timed out`));
    }, opts.timeoutMs ?? 10_000);
    socket.once("connect", () => {
      clearTimeout(timer);
      resolve(socket);
    });
    socket.once("error", (error) => {
      clearTimeout(timer);
      reject(
        new WsHandshakeError(0, "", `cannot connect to ${host}:${port}: ${error.message}`, error),
      );
    });
  });
}

/** Reads up to the end of the HTTP response head; returns it and the bytes after it. */
function readHead(
  socket: net.Socket,
  timeoutMs: number,
): Promise<{ head: string; rest: Uint8Array }> {
  return new Promise((resolve, reject) => {
    let buffered: Uint8Array = new Uint8Array(0);
    const timer = setTimeout(
      () => finish(new WsHandshakeError(0, "", "the handshake timed out")),
      timeoutMs,
    );
    const finish = (error?: Error, value?: { head: string; rest: Uint8Array }) => {
      clearTimeout(timer);
      socket.off("data", onData);
      socket.off("end", onEnd);
      socket.off("error", onError);
      socket.pause();
      if (error) reject(error);
      else resolve(value!);
    };
    const onData = (chunk: Uint8Array) => {
      buffered = concat(buffered, chunk);
      const end = indexOfCrlf2(buffered);
      if (end < 0) return;
      finish(undefined, {
        head: decoder.decode(buffered.subarray(0, end)),
        rest: buffered.slice(end + 4),
      });
    };
    const onEnd = () =>
      finish(
        new WsHandshakeError(
          0,
          decoder.decode(buffered),
          "the server closed the connection during the handshake",
        ),
      );
    const onError = (error: Error) => finish(new WsHandshakeError(0, "", error.message, error));
    socket.on("data", onData);
    socket.once("end", onEnd);
    socket.once("error", onError);
  });
}

/** Reads a short error body after a refused upgrade (Content-Length or until close, at most 64 KiB). */
function readBody(socket: net.Socket, head: string, rest: Uint8Array): Promise<string> {
  const length = Number(/\r\ncontent-length:\s*(\d+)/i.exec(head)?.[1] ?? -1);
  return new Promise((resolve) => {
    let body = rest;
    const done = () => {
      clearTimeout(timer);
      socket.off("data", onData);
      resolve(decoder.decode(length >= 0 ? body.subarray(0, length) : body));
    };
    const timer = setTimeout(done, 2000);
    const onData = (chunk: Uint8Array) => {
      body = concat(body, chunk);
      if ((length >= 0 && body.length >= length) || body.length > 65536) done();
    };
    if (length >= 0 && body.length >= length) return done();
    socket.on("data", onData);
    socket.once("end", done);
    socket.once("close", done);
    socket.resume();
  });
}

async function acceptFor(key: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-1", encoder.encode(key + GUID));
  return btoa(String.fromCharCode(...new Uint8Array(digest)));
}

/** A client frame: FIN set, masked as RFC 6455 requires of clients. */
function encodeFrame(opcode: number, payload: Uint8Array): Uint8Array {
  const length = payload.length;
  const extra = length < 126 ? 0 : length < 65536 ? 2 : 8;
  const frame = new Uint8Array(2 + extra + 4 + length);
  frame[0] = 0x80 | opcode;
  const view = new DataView(frame.buffer);
  if (extra === 0) frame[1] = 0x80 | length;
  else if (extra === 2) {
    frame[1] = 0x80 | 126;
    view.setUint16(2, length);
  } else {
    frame[1] = 0x80 | 127;
    view.setBigUint64(2, BigInt(length));
  }
  const maskAt = 2 + extra;
  const mask = crypto.getRandomValues(new Uint8Array(4));
  frame.set(mask, maskAt);
  const body = frame.subarray(maskAt + 4);
  body.set(payload);
  applyMask(body, mask);
  return frame;
}

/** XORs `data` with the 4-byte `mask`, four bytes at a time where aligned. */
function applyMask(data: Uint8Array, mask: Uint8Array): void {
  const aligned = (4 - (data.byteOffset % 4)) % 4;
  let i = 0;
  for (; i < aligned && i < data.length; i++) data[i] ^= mask[i % 4];
  const words = Math.floor((data.length - i) / 4);
  if (words > 0) {
    const m = new Uint8Array(4);
    for (let k = 0; k < 4; k++) m[k] = mask[(i + k) % 4];
    const word = new Uint32Array(m.buffer)[0];
    const view = new Uint32Array(data.buffer, data.byteOffset + i, words);
    for (let w = 0; w < words; w++) view[w] ^= word;
    i += words * 4;
  }
  for (; i < data.length; i++) data[i] ^= mask[i % 4];
}

/**
 * Turns the socket's bytes into messages. Pings are answered, fragments
 * joined, a close frame ends the stream. Reading pauses the socket while the
 * consumer is not pulling (backpressure reaches the server).
 */
function frameReader(
  socket: net.Socket,
  initial: Uint8Array,
  reply: (frame: { opcode: number; payload: Uint8Array }) => Promise<void>,
): ReadableStream<Uint8Array | string> {
  let buffered: Uint8Array = initial;
  let fragments: Uint8Array[] = [];
  let fragmentOpcode = 0;
  let ended = false;
  let controller!: ReadableStreamDefaultController<Uint8Array | string>;

  const parse = () => {
    for (;;) {
      if (buffered.length < 2) return;
      const opcode = buffered[0] & 0x0f;
      const fin = (buffered[0] & 0x80) !== 0;
      let length = buffered[1] & 0x7f;
      let offset = 2;
      if (length === 126) {
        if (buffered.length < 4) return;
        length = (buffered[2] << 8) | buffered[3];
        offset = 4;
      } else if (length === 127) {
        if (buffered.length < 10) return;
        length = Number(new DataView(buffered.buffer, buffered.byteOffset + 2, 8).getBigUint64(0));
        offset = 10;
      }
      const masked = (buffered[1] & 0x80) !== 0;
      const maskAt = offset;
      if (masked) offset += 4;
      if (buffered.length < offset + length) return;
      const payload = buffered.slice(offset, offset + length);
      if (masked) applyMask(payload, buffered.subarray(maskAt, maskAt + 4));
      buffered = buffered.subarray(offset + length);
      if (!handle(opcode, fin, payload)) return;
    }
  };

  const handle = (opcode: number, fin: boolean, payload: Uint8Array): boolean => {
    if (opcode === 8) {
      ended = true;
      controller.close();
      socket.end();
      return false;
    }
    if (opcode === 9) {
      reply({ opcode: 10, payload }).catch(() => {});
      return true;
    }
    if (opcode === 10) return true;
    if (opcode !== 0) {
      fragmentOpcode = opcode;
      fragments = [];
    }
    fragments.push(payload);
    if (!fin) return true;
    const whole = fragments.length === 1 ? fragments[0] : fragments.reduce(concat);
    fragments = [];
    controller.enqueue(fragmentOpcode === 1 ? decoder.decode(whole) : whole);
    return true;
  };

  return new ReadableStream<Uint8Array | string>({
    start(c) {
      controller = c;
      socket.on("data", (chunk: Buffer) => {
        if (ended) return;
        buffered = buffered.length === 0 ? new Uint8Array(chunk) : concat(buffered, chunk);
        parse();
        if (!ended && (controller.desiredSize ?? 1) <= 0) socket.pause();
      });
      const finish = () => {
        if (ended) return;
        ended = true;
        controller.close();
      };
      socket.once("end", finish);
      socket.once("close", finish);
      socket.once("error", (error) => {
        if (ended) return;
        ended = true;
        controller.error(error);
      });
      parse();
      socket.resume();
    },
    pull() {
      socket.resume();
    },
    cancel() {
      ended = true;
      socket.destroy();
    },
  }, { highWaterMark: 16 });
}

function indexOfCrlf2(bytes: Uint8Array): number {
  for (let i = 0; i + 3 < bytes.length; i++) {
    if (bytes[i] === 13 && bytes[i + 1] === 10 && bytes[i + 2] === 13 && bytes[i + 3] === 10) {
      return i;
    }
  }
  return -1;
}
