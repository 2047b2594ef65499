import { assert, assertEquals, assertFalse } from "@deps/assert";
import { inspect } from "node:util";
import {
  CapabilityDenied,
  ConfigError,
  OpsExecError,
  StepError,
  TransportError,
} from "./errors.ts";

const cause = new TypeError("error sending request: connection refused (os error 111)");
const ERRORS: [OpsExecError, string][] = [
  [
    new TransportError("unreachable", "web-1", "cannot reach the agent", { cause, detail: "a\nb" }),
    "TransportError [unreachable]: web-1: cannot reach the agent",
  ],
  [
    new CapabilityDenied("bento.sign", "mac-1", "agent", { reason: "above the ceiling" }),
    'CapabilityDenied: action "bento.sign" on host mac-1 is not granted by the agent ' +
    "(host ceiling or grants): above the ceiling",
  ],
  [new StepError("cwd", "must be absolute"), 'StepError: step field "cwd": must be absolute'],
  [new ConfigError("url", "has a path"), "ConfigError: url: has a path"],
  [
    new OpsExecError("agent_busy", "mac-1: too many steps"),
    "OpsExecError [agent_busy]: mac-1: too many steps",
  ],
  [
    new TransportError("protocol", "h", "first line\nsecond line"),
    "TransportError [protocol]: h: first line / second line",
  ],
];

Deno.test("18.5 every error prints as one readable line: String, template, console.log (Deno and Node)", () => {
  for (const [error, line] of ERRORS) {
    assertEquals(String(error), line);
    assertEquals(`${error}`, line);
    assertEquals(Deno.inspect(error), line, "what console.log prints in Deno");
    assertEquals(inspect(error), line, "what console.log prints in Node");
    // Inside a value (a fanOut result), the same line, no stack.
    const nested = Deno.inspect({ host: "web-1", error });
    assert(nested.includes(line) && !nested.includes("    at "), nested);
  }
});

Deno.test("18.5 the stack, cause and detail stay on the error", () => {
  const [error] = ERRORS[0] as [TransportError, string];
  assert(error.stack?.includes("errors_test.ts"));
  assertEquals(error.cause, cause);
  assertEquals(error.detail, "a\nb");
  assertFalse(Deno.inspect(error).includes("\n"));
});
