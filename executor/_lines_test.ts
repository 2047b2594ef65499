import fc from "@deps/fast-check";
import { assertEquals } from "@deps/assert";
import { type BatchLogSink, LineGate, MAX_LINE_LENGTH, pumpLines, WRITE_LINES } from "./_lines.ts";
import type { LogLine } from "./types.ts";

/** Lines as the one-line-at-a-time path delivers them. */
class LineSink {
  readonly lines: LogLine[] = [];
  write(line: LogLine): void {
    this.lines.push(line);
  }
}

/** A batching sink (as the agent's), expanded back to lines; optionally slow. */
class BatchSink implements BatchLogSink {
  readonly lines: LogLine[] = [];
  batches = 0;
  constructor(readonly slow = false) {}
  write(line: LogLine): Promise<void> | void {
    this.lines.push(line);
    if (this.slow) return new Promise((resolve) => setTimeout(resolve, 0));
  }
  [WRITE_LINES](stream: LogLine["stream"], seq: number, text: string, count: number) {
    const parts = text.split("\n");
    assertEquals(parts.length, count, "count matches the lines in text");
    parts.forEach((part, i) => this.lines.push({ stream, text: part, seq: seq + i }));
    this.batches++;
    if (this.slow) return new Promise<void>((resolve) => setTimeout(resolve, 0));
  }
}

function streamOf(chunks: Uint8Array[]): ReadableStream<Uint8Array> {
  return new ReadableStream({
    pull(controller) {
      const next = chunks.shift();
      if (next) controller.enqueue(next);
      else controller.close();
    },
  });
}

function cut(bytes: Uint8Array, points: number[]): Uint8Array[] {
  const sorted = [...new Set(points.map((p) => p % (bytes.length + 1)))].sort((a, b) => a - b);
  const chunks: Uint8Array[] = [];
  let start = 0;
  for (const point of [...sorted, bytes.length]) {
    if (point > start) chunks.push(bytes.slice(start, point));
    start = point;
  }
  return chunks;
}

async function pump(sink: LineSink | BatchSink, out: Uint8Array[], err: Uint8Array[]) {
  const gate = new LineGate(sink);
  await Promise.all([
    pumpLines(streamOf(out), "stdout", gate),
    pumpLines(streamOf(err), "stderr", gate),
  ]);
  return { lines: sink.lines, counts: gate.counts };
}

const enc = new TextEncoder();

Deno.test("batched delivery yields exactly the lines of line-by-line delivery", async () => {
  const samples = [
    "a\nb\n\nc",
    "ü€😀 split\nacross\n",
    "bad \xff bytes\n",
    "\n\n\n",
    "x".repeat(MAX_LINE_LENGTH + 10) + "\nshort\n" + "y".repeat(MAX_LINE_LENGTH * 2 + 3),
    "no newline",
  ];
  for (const sample of samples) {
    const bytes = sample.includes("\xff")
      ? new Uint8Array([...enc.encode("bad "), 0xff, ...enc.encode(" bytes\n")])
      : enc.encode(sample);
    for (const points of [[], [1], [3, 5, 7], [bytes.length >> 1], [2, MAX_LINE_LENGTH + 3]]) {
      const lines = await pump(new LineSink(), cut(bytes, points), []);
      const batched = await pump(new BatchSink(), cut(bytes, points), []);
      assertEquals(batched, lines, `${sample.slice(0, 20)} cut at ${points}`);
    }
  }
});

Deno.test("property: batched and line-by-line delivery agree, stdout and stderr interleaved", async () => {
  const text = fc.array(
    fc.oneof(
      fc.constantFrom("\n", "\n\n", "ü", "😀", "a", "line", " ", "\r"),
      fc.string({ maxLength: 5 }),
    ),
    { maxLength: 40 },
  ).map((parts) => enc.encode(parts.join("")));
  await fc.assert(
    fc.asyncProperty(
      text,
      text,
      fc.array(fc.nat(200), { maxLength: 6 }),
      fc.boolean(),
      async (out, err, points, slow) => {
        const lines = await pump(new LineSink(), cut(out, points), cut(err, points));
        const batched = await pump(new BatchSink(slow), cut(out, points), cut(err, points));
        // Both streams keep their own order; seq numbers are one sequence either way.
        const by = (r: { lines: LogLine[] }, s: string) =>
          r.lines.filter((l) => l.stream === s).map((l) => l.text);
        assertEquals(by(batched, "stdout"), by(lines, "stdout"));
        assertEquals(by(batched, "stderr"), by(lines, "stderr"));
        assertEquals(batched.counts, lines.counts);
        assertEquals(
          batched.lines.map((l) => l.seq).sort((a, b) => a - b),
          batched.lines.map((_, i) => i),
        );
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("a batching sink gets one call per chunk of complete lines", async () => {
  const sink = new BatchSink();
  const chunk = enc.encode("1\n2\n3\n4\npart");
  await pump(sink, [chunk, enc.encode("ial\n")], []);
  assertEquals(sink.lines.map((l) => l.text), ["1", "2", "3", "4", "partial"]);
  assertEquals(sink.batches, 2);
});

// ---- the split at MAX_LINE_LENGTH (issue 10) ------------------------------------------

Deno.test("the 1 MiB split never cuts a surrogate pair, wherever the reads fall", async () => {
  for (const before of [MAX_LINE_LENGTH - 1, MAX_LINE_LENGTH - 3, 2 * MAX_LINE_LENGTH - 1]) {
    const text = `${"x".repeat(before)}😀😀😀 end`;
    for (const newline of ["\n", ""]) {
      const bytes = enc.encode(text + newline);
      for (
        const points of [[], [1], [before], [before + 1], [before + 2], [65536 * 5, before + 3]]
      ) {
        for (const sink of [new LineSink(), new BatchSink()]) {
          const { lines } = await pump(sink, cut(bytes, points), []);
          const texts = lines.map((line) => line.text);
          const where = `${before} x, cut at ${points}, ${sink.constructor.name}`;
          for (const piece of texts) {
            assertEquals(piece.isWellFormed(), true, `half a surrogate pair: ${where}`);
            assertEquals(piece.length <= MAX_LINE_LENGTH, true, where);
          }
          assertEquals(texts.join(""), text, where);
        }
      }
    }
  }
});
