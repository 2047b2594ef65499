// The one NDJSON codec: the agent writes its events with it, AgentRpc and the
// NDJSON sink read and write with it.

const encoder = new TextEncoder();

/** One value as one NDJSON line (UTF-8, newline-terminated). */
export function encodeJsonLine(value: unknown): Uint8Array {
  return encoder.encode(`${JSON.stringify(value)}\n`);
}

/** A line that is not JSON, or longer than the limit. */
export class NdjsonError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "NdjsonError";
  }
}

/**
 * Reads NDJSON values from a byte stream, one at a time. A line longer than
 * `maxLineLength` characters, or one that is not JSON, is an {@linkcode NdjsonError}.
 */
export async function* decodeJsonLines(
  stream: ReadableStream<Uint8Array>,
  opts: { maxLineLength?: number } = {},
): AsyncGenerator<unknown> {
  const max = opts.maxLineLength ?? 64 * 1024 * 1024;
  const decoder = new TextDecoder();
  const reader = stream.getReader();
  let partial = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const text = decoder.decode(value, { stream: true });
      let start = 0;
      for (;;) {
        const end = text.indexOf("\n", start);
        if (end < 0) break;
        const line = partial + text.slice(start, end);
        partial = "";
        start = end + 1;
        if (!isBlank(line)) yield parseLine(line);
      }
      partial += text.slice(start);
      if (partial.length > max) {
        throw new NdjsonError(`an NDJSON line exceeds ${max} characters`);
      }
    }
    partial += decoder.decode();
    if (!isBlank(partial)) yield parseLine(partial);
  } finally {
    await reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}

/** Whitespace only? Checked cheaply: a JSON line starts with a non-space. */
function isBlank(line: string): boolean {
  if (line.length === 0) return true;
  const first = line.charCodeAt(0);
  return (first === 0x20 || first === 0x09 || first === 0x0d) && line.trim() === "";
}

function parseLine(line: string): unknown {
  try {
    return JSON.parse(line);
  } catch {
    throw new NdjsonError(`not a JSON line: ${line.slice(0, 80)}`);
  }
}
