// The fuzz targets (`deno task fuzz`, tools/fuzz.ts): every parser that reads
// what another party sends. Each is imported from where it lives today; after
// a reshape, re-point the imports here and nowhere else.
//
// A target is a fast-check property: for any input, the parser either
// accepts it (and what it accepted holds its invariants) or refuses it with
// its own error class. Any other exception (a TypeError, a RangeError, an
// uncaught parse failure) is a finding.

import fc from "npm:fast-check@^3.23.2";
import { CapabilitySet } from "../capability/capability_set.ts";
import { ConfigError, StepError } from "../executor/errors.ts";
import { decodeJsonLines, NdjsonError } from "../executor/_ndjson.ts";
import { Step } from "../step/step.ts";
import { encodeAck, encodeKill, FrameReader } from "../transports/_ssh_session.ts";
import { parseConfig } from "../agent/config.ts";
import { parseSyncRequest, RsyncArgvError } from "../agent/_sync.ts";

/** One fuzz target. */
export interface FuzzTarget {
  /** What is fuzzed, e.g. `Step.fromJSON`. */
  name: string;
  /** The property; async ones are awaited per case. */
  property: fc.IProperty<unknown[]> | fc.IAsyncProperty<unknown[]>;
}

/** `fn()` returns, or throws one of `expected`; anything else propagates. */
function refusesWith(fn: () => unknown, ...expected: (new (...args: never[]) => Error)[]): unknown {
  try {
    return fn();
  } catch (error) {
    if (expected.some((type) => error instanceof type)) return undefined;
    throw error;
  }
}

const ACTION = fc.stringMatching(/^[a-z][a-z0-9-]{0,6}(\.[a-z*][a-z0-9-]{0,6}){0,2}$/);
const WORDS = fc.array(fc.string({ maxLength: 12 }), { maxLength: 5 });

/** Objects shaped like steps, with each field sometimes wrong. */
const STEPISH = fc.record({
  action: fc.oneof(ACTION, fc.string(), fc.constant("observe")),
  kind: fc.oneof(fc.constantFrom("shell", "exec"), fc.string()),
  script: fc.oneof(fc.string(), fc.integer()),
  argv: fc.oneof(WORDS, fc.string()),
  cwd: fc.oneof(fc.constant("/tmp"), fc.string()),
  env: fc.oneof(fc.dictionary(fc.string({ maxLength: 6 }), fc.string()), fc.anything()),
  stdinBase64: fc.oneof(fc.base64String(), fc.string()),
  timeoutMs: fc.oneof(fc.integer(), fc.double()),
  killGraceMs: fc.oneof(fc.integer({ min: 0, max: 2 ** 32 }), fc.double()),
  label: fc.string(),
  extra: fc.anything(),
}, { requiredKeys: [] });

const GRANT = fc.oneof(
  ACTION,
  fc.constantFrom("*", "observe", "sync.push", "sync.pull"),
  fc.tuple(fc.constantFrom("sync.push:", "sync.pull:", "bento.x:"), fc.string()).map(([a, b]) =>
    a + b
  ),
  fc.string(),
);

/** TOML-ish text: real keys and tables with random values, and noise. */
const TOML = fc.array(
  fc.oneof(
    fc.constantFrom(
      "[agent]",
      "[identity]",
      "[ceiling]",
      "[[grant]]",
      'listen = "127.0.0.1:7070"',
      'audit_log = "/tmp/ops-agent/a.jsonl"',
      'provider = "loopback"',
      'loopback_identity = "user:dev@localhost"',
      'allow = ["demo.*"]',
      'to = ["user:dev@localhost", "node:7", "node-id:7"]',
      "max_kill_grace = 5",
      'step_isolation = "namespace"',
    ),
    fc.tuple(
      fc.constantFrom(
        "listen",
        "audit_log",
        "max_concurrent",
        "max_kill_grace",
        "shutdown_grace",
        "audit_syslog",
        "header_timeout",
        "to",
        "allow",
        "provider",
        "socket",
      ),
      fc.oneof(
        fc.string().map((s) => JSON.stringify(s)),
        fc.integer().map(String),
        fc.array(fc.string()).map((a) => JSON.stringify(a)),
        fc.constantFrom("true", "false", "1e999", "-0", "nan", "inf", "{}", "[", '"'),
      ),
    ).map(([key, value]) => `${key} = ${value}`),
    fc.string(),
  ),
  { maxLength: 14 },
).map((lines) => lines.join("\n"));

/** Frames as the perl supervisor sends them, for the split-anywhere property. */
const FRAME = fc.tuple(
  fc.constantFrom("O", "E", "X", "k"),
  fc.integer({ min: 0, max: 2 ** 32 - 1 }),
  fc.uint8Array({ maxLength: 40 }),
);

function frame(type: string, id: number, payload: Uint8Array): Uint8Array {
  const bytes = new Uint8Array(9 + payload.length);
  const view = new DataView(bytes.buffer);
  bytes[0] = type.charCodeAt(0);
  view.setUint32(1, id);
  view.setUint32(5, payload.length);
  bytes.set(payload, 9);
  return bytes;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) [out.set(part, at), at += part.length];
  return out;
}

/** Cuts `bytes` at `cuts` (positions, any order). */
function split(bytes: Uint8Array, cuts: number[]): Uint8Array[] {
  const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  const pieces: Uint8Array[] = [];
  let last = 0;
  for (const point of points) [pieces.push(bytes.subarray(last, point)), last = point];
  pieces.push(bytes.subarray(last));
  return pieces;
}

const HELLO = frame("H", 0, new TextEncoder().encode("OPSX2"));

/** The targets, each at ≥ 10^5 cases in `deno task fuzz`. */
export const TARGETS: readonly FuzzTarget[] = [
  {
    name: "Step.fromJSON",
    property: fc.property(fc.oneof(STEPISH, fc.anything()), (value) => {
      const step = refusesWith(() => Step.fromJSON(value), StepError) as Step | undefined;
      if (step === undefined) return;
      // What it accepted reads back the same.
      const again = Step.fromJSON(JSON.parse(JSON.stringify(step.toJSON())));
      if (JSON.stringify(again.toJSON()) !== JSON.stringify(step.toJSON())) {
        throw new Error(`Step.fromJSON(toJSON()) differs for ${JSON.stringify(value)}`);
      }
    }),
  },
  {
    name: "grants (CapabilitySet.fromJSON, of, intersect)",
    property: fc.property(
      fc.oneof(fc.array(GRANT, { maxLength: 6 }), fc.anything()),
      fc.array(GRANT, { maxLength: 6 }),
      ACTION,
      fc.option(fc.string(), { nil: undefined }),
      (a, b, action, path) => {
        const left = refusesWith(() => CapabilitySet.fromJSON(a), ConfigError) as
          | CapabilitySet
          | undefined;
        const right = refusesWith(() => CapabilitySet.fromJSON(b), ConfigError) as
          | CapabilitySet
          | undefined;
        if (!left || !right) return;
        const again = CapabilitySet.fromJSON(left.toJSON());
        if (JSON.stringify(again.toJSON()) !== JSON.stringify(left.toJSON())) {
          throw new Error(`fromJSON(toJSON()) differs for ${JSON.stringify(a)}`);
        }
        const both = left.intersect(right).allows(action, path);
        if (both !== (left.allows(action, path) && right.allows(action, path))) {
          throw new Error(`A∩B allows ${action} ${path} = ${both} for ${JSON.stringify([a, b])}`);
        }
      },
    ),
  },
  {
    name: "the agent's config parser (parseConfig)",
    property: fc.property(TOML, (text) => {
      refusesWith(() => parseConfig(text), ConfigError);
    }),
  },
  {
    name: "the NDJSON decoder (decodeJsonLines)",
    property: fc.asyncProperty(
      fc.array(fc.oneof(fc.jsonValue(), fc.string()), { maxLength: 6 }),
      fc.array(fc.nat(), { maxLength: 5 }),
      fc.boolean(),
      async (values, cuts, garble) => {
        const text = values.map((v) => JSON.stringify(v)).join("\n") + (garble ? "\n{x" : "\n");
        const stream = ReadableStream.from(split(new TextEncoder().encode(text), cuts));
        const got: unknown[] = [];
        try {
          for await (const value of decodeJsonLines(stream, { maxLineLength: 1 << 16 })) {
            got.push(value);
          }
        } catch (error) {
          if (!(error instanceof NdjsonError)) throw error;
          if (!garble) throw new Error(`refused a clean stream: ${error.message}`);
          return;
        }
        const want = values.map((v) => JSON.parse(JSON.stringify(v)));
        if (!garble && JSON.stringify(got) !== JSON.stringify(want)) {
          throw new Error(`decoded ${JSON.stringify(got)}, sent ${JSON.stringify(want)}`);
        }
      },
    ),
  },
  {
    name: "the ssh frame reader (FrameReader)",
    property: fc.property(
      fc.array(FRAME, { maxLength: 6 }),
      fc.array(fc.nat(), { maxLength: 6 }),
      fc.uint8Array({ maxLength: 64 }),
      fc.boolean(),
      (frames, cuts, noise, junkFirst) => {
        const bytes = concat([
          junkFirst ? noise : new Uint8Array(),
          HELLO,
          ...frames.map(([t, id, p]) => frame(t, id, p)),
          encodeKill(7),
          encodeAck(7, 1, 2),
          ...(junkFirst ? [] : [noise]),
        ]);
        const seen: string[] = [];
        const reader = new FrameReader({
          data: (stream, id, piece) => seen.push(`${stream}:${id}:${piece.length}`),
          control: (type, id, payload) => seen.push(`${type}:${id}:${payload.length}`),
        });
        try {
          for (const piece of split(bytes, cuts)) reader.push(piece);
        } catch (error) {
          // Noise after the frames may read as a frame no supervisor sends: refused, by name.
          if (!(error instanceof Error) || !/does not know/.test(error.message)) throw error;
          if (junkFirst || noise.length === 0) throw error;
        }
        // The frames before any noise arrive whole, whatever the cuts.
        const sent = frames.map(([t, id, p]) => `${t}:${id}:${p.length}`);
        const controls = seen.filter((s) => !s.startsWith("stdout") && !s.startsWith("stderr"));
        if (controls[0] !== "H:0:5") throw new Error(`no hello first: ${seen}`);
        const sentControls = sent.filter((s) => !/^[OE]:/.test(s));
        for (const [i, want] of sentControls.entries()) {
          if (controls[i + 1] !== want) {
            throw new Error(`control ${i}: got ${controls[i + 1]}, sent ${want} (${seen})`);
          }
        }
      },
    ),
  },
  {
    name: "the rsync-argv validator (parseSyncRequest)",
    property: fc.property(
      fc.oneof(
        fc.array(
          fc.oneof(
            fc.constantFrom(
              "rsync",
              "--server",
              "--sender",
              "-logtpre.iLsfxCIvu",
              "-logDtpre.iLsfxCIvu",
              "-e",
              "--rsync-path=x",
              "-L",
              "-s",
              ".",
              "/srv/app/",
              "--delete",
              "-r",
              "--log-file=/tmp/x",
            ),
            fc.string({ maxLength: 10 }),
          ),
          { maxLength: 9 },
        ).map((words) => JSON.stringify(words)),
        fc.string(),
        fc.constant(undefined),
      ),
      (value) => {
        const request = refusesWith(() => parseSyncRequest(value), RsyncArgvError) as
          | ReturnType<typeof parseSyncRequest>
          | undefined;
        if (request === undefined) return;
        // Whatever is accepted names no program, no file elsewhere, no link-following.
        for (const word of request.argv) {
          if (
            /^--(rsync-path|log-file|files-from|include-from|exclude-from|temp-dir|partial-dir|backup-dir|compare-dest|copy-dest|link-dest)/
              .test(word)
          ) {
            throw new Error(`accepted ${word} in ${value}`);
          }
          if (/^-[A-Za-z]/.test(word) && /[DLkKse]/.test(word.split("e.")[0].replace(/^-/, ""))) {
            throw new Error(`accepted the short option group ${word} in ${value}`);
          }
        }
      },
    ),
  },
];
