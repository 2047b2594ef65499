import { assertEquals, assertNotEquals, assertThrows } from "@deps/assert";
import { decodeJsonLines, encodeJsonLine, NdjsonError } from "./_ndjson.ts";
import { CollectingSink, ConsoleSink, NdjsonSink, RedactingSink } from "./sinks.ts";
import type { LogLine } from "./types.ts";

function collector(): { writable: WritableStream<Uint8Array>; text: () => string } {
  const chunks: Uint8Array[] = [];
  return {
    writable: new WritableStream({ write: (chunk) => void chunks.push(chunk) }),
    text: () => new TextDecoder().decode(new Uint8Array(chunks.flatMap((c) => [...c]))),
  };
}

const out = (text: string, seq: number): LogLine => ({ stream: "stdout", text, seq });
const err = (text: string, seq: number): LogLine => ({ stream: "stderr", text, seq });

Deno.test("ConsoleSink prefixes the host and marks stderr, without colour off a terminal", async () => {
  const dest = collector();
  const sink = new ConsoleSink({ host: "web-1", writable: dest.writable });
  await sink.write(out("hello", 0));
  await sink.write(err("oops", 1));
  assertEquals(dest.text(), "[web-1] hello\n[web-1 stderr] oops\n");
});

/** The colour code of the prefix a coloured sink for `host` writes. */
async function colourOf(host: string): Promise<string> {
  const dest = collector();
  await new ConsoleSink({ host, writable: dest.writable, color: true }).write(out("x", 0));
  // deno-lint-ignore no-control-regex
  return /^\x1b\[(\d+)m/.exec(dest.text())![1];
}

Deno.test("18.5 a fleet's hosts get distinct colours: web-1 and db-1, and any ten hosts", async () => {
  const [web, db] = [await colourOf("web-1"), await colourOf("db-1")];
  assertNotEquals(web, db);
  const fleet = Array.from({ length: 10 }, (_, i) => `fleet-${crypto.randomUUID()}-${i}`);
  const colours = [];
  for (const host of fleet) colours.push(await colourOf(host));
  assertEquals(new Set(colours).size, 10, colours.join(" "));
  // A host keeps its colour.
  assertEquals(await colourOf("web-1"), web);
  assertEquals(await colourOf(fleet[3]), colours[3]);
});

Deno.test("ConsoleSink colours the prefix only when asked (or on a TTY)", async () => {
  const dest = collector();
  const sink = new ConsoleSink({ host: "web-1", writable: dest.writable, color: true });
  await sink.write(out("hello", 0));
  // deno-lint-ignore no-control-regex
  assertEquals(dest.text().replace(/\x1b\[\d+m/g, ""), "[web-1] hello\n");
  // deno-lint-ignore no-control-regex
  assertEquals(/\x1b\[\d+m\[web-1\]\x1b\[0m hello/.test(dest.text()), true);
});

Deno.test("CollectingSink keeps lines and joins per stream", () => {
  const sink = new CollectingSink();
  sink.write(out("a", 0));
  sink.write(err("b", 1));
  sink.write(out("c", 2));
  assertEquals(sink.text("stdout"), "a\nc");
  assertEquals(sink.text("stderr"), "b");
  assertEquals(sink.text(), "a\nb\nc");
});

Deno.test("NdjsonSink writes one object per line that the codec reads back", async () => {
  const dest = collector();
  const sink = new NdjsonSink(dest.writable, { host: "mac-1" });
  await sink.write(out('quote " and \\ and ü', 0));
  await sink.write(err("", 1));
  await sink.close();
  const lines = dest.text().split("\n");
  assertEquals(lines.length, 3);
  assertEquals(JSON.parse(lines[0]), {
    host: "mac-1",
    stream: "stdout",
    text: 'quote " and \\ and ü',
    seq: 0,
  });
  const stream = new Blob([dest.text()]).stream();
  const values = [];
  for await (const value of decodeJsonLines(stream)) values.push(value);
  assertEquals(values.length, 2);
});

Deno.test("RedactingSink masks literal and pattern secrets, longest first", () => {
  const inner = new CollectingSink();
  const sink = new RedactingSink(inner, ["abc", "abcdef", /token=\w+/g, ""]);
  sink.write(out("x abcdef y abc token=zz9 z", 0));
  sink.write(out("clean", 1));
  assertEquals(inner.lines.map((l) => l.text), ["x *** y *** *** z", "clean"]);
  assertEquals(inner.lines[0].seq, 0);
  assertThrows(() => new RedactingSink(inner, [/nog/]), TypeError, "g flag");
});

Deno.test("the NDJSON codec handles values split across chunks and rejects junk", async () => {
  const bytes = new Uint8Array([...encodeJsonLine({ a: "ü" }), ...encodeJsonLine([1, 2])]);
  const stream = new ReadableStream<Uint8Array>({
    start(controller) {
      for (const byte of bytes) controller.enqueue(new Uint8Array([byte]));
      controller.close();
    },
  });
  const values = [];
  for await (const value of decodeJsonLines(stream)) values.push(value);
  assertEquals(values, [{ a: "ü" }, [1, 2]]);

  const junk = new Blob(["{}\nnot json\n"]).stream();
  const seen: unknown[] = [];
  let error: unknown;
  try {
    for await (const value of decodeJsonLines(junk)) seen.push(value);
  } catch (e) {
    error = e;
  }
  assertEquals(seen, [{}]);
  assertEquals(error instanceof NdjsonError, true);

  const long = new Blob(["x".repeat(100)]).stream();
  let tooLong: unknown;
  try {
    for await (const _ of decodeJsonLines(long, { maxLineLength: 10 })) { /* none */ }
  } catch (e) {
    tooLong = e;
  }
  assertEquals(tooLong instanceof NdjsonError, true);
});
