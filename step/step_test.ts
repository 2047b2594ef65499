import { assert, assertEquals, assertThrows } from "@deps/assert";
import { StepError } from "../executor/errors.ts";
import { isActionName, isReservedAction, Step } from "./mod.ts";

function rejects(value: unknown, field: string): StepError {
  const error = assertThrowsStepError(() => Step.fromJSON(value));
  assertEquals(error.field, field, `expected field ${field}: ${error.message}`);
  return error;
}

function assertThrowsStepError(fn: () => unknown): StepError {
  const error = assertThrows(fn, StepError);
  assertEquals(error.code, "invalid_step");
  return error;
}

const valid = { action: "bento.build", kind: "exec", argv: ["true"] };

Deno.test("Step.shell builds an sh -c argv and round-trips through JSON", () => {
  const step = Step.shell("sando.promote", "set -e; echo 'hi'", {
    cwd: "/srv",
    env: { MODE: "canary", EMPTY: "" },
    stdin: "input\n",
    timeoutMs: 1000,
    killGraceMs: 10,
    label: "promote canary",
  });
  assertEquals(step.argv, ["/bin/sh", "-c", "set -e; echo 'hi'"]);
  const json = JSON.parse(JSON.stringify(step));
  assertEquals(json.stdinBase64, btoa("input\n"));
  const back = Step.fromJSON(json);
  assertEquals(back.toJSON(), step.toJSON());
  assertEquals(new TextDecoder().decode(back.stdin), "input\n");
  assertEquals(back.killGraceMs, 10);
});

Deno.test("Step.exec keeps argv verbatim, binary stdin included", () => {
  const bytes = new Uint8Array([0, 255, 10, 13, 128]);
  const step = Step.exec("bento.sign", ["codesign", "--", "-dash", "", "ünï"], { stdin: bytes });
  const back = Step.fromJSON(JSON.parse(JSON.stringify(step.toJSON())));
  assertEquals(back.argv, ["codesign", "--", "-dash", "", "ünï"]);
  assertEquals(back.stdin, bytes);
  assertEquals(back.kind, "exec");
});

Deno.test("steps are immutable", () => {
  const step = Step.exec("bento.sign", ["true"], { env: { A: "1" } });
  assertThrows(() => ((step.env as Record<string, string>).A = "2"), TypeError);
  assertThrows(() => ((step.argv as string[])[0] = "false"), TypeError);
});

Deno.test("action grammar: lowercase dotted names, reserved library actions", () => {
  for (const ok of ["observe", "bento.sign", "sando.promote", "a.b-c.d_e", "x1.y2"]) {
    assert(isActionName(ok), ok);
  }
  for (
    const bad of ["", "Bento", "bento.", ".bento", "bento..sign", "bento.*", "1abc", "a b", "a:b"]
  ) {
    assert(!isActionName(bad), bad);
  }
  assert(!isActionName("a".repeat(129)));
  for (const reserved of ["observe", "sync.push", "sync.pull", "sync.other", "observe.more"]) {
    assert(isReservedAction(reserved), reserved);
    assertEquals(assertThrowsStepError(() => Step.shell(reserved, "true")).field, "action");
  }
  assert(!isReservedAction("syncer.push"));
});

Deno.test("fromJSON rejects unknown fields, naming them", () => {
  rejects({ ...valid, extra: 1 }, "extra");
  rejects({ ...valid, Env: {} }, "Env");
});

Deno.test("fromJSON rejects wrong types, naming the field", () => {
  rejects(null, "(root)");
  rejects([valid], "(root)");
  rejects("step", "(root)");
  rejects({ ...valid, action: 7 }, "action");
  rejects({ ...valid, kind: "bash" }, "kind");
  rejects({ ...valid, kind: undefined }, "kind");
  rejects({ ...valid, argv: "true" }, "argv");
  rejects({ ...valid, argv: [] }, "argv");
  rejects({ ...valid, argv: ["true", 1] }, "argv[1]");
  rejects({ ...valid, argv: [""] }, "argv[0]");
  rejects({ action: "a.b", kind: "shell", script: ["echo"] }, "script");
  rejects({ action: "a.b", kind: "shell", script: "" }, "script");
  rejects({ action: "a.b", kind: "shell", script: "x", argv: ["x"] }, "argv");
  rejects({ ...valid, script: "x" }, "script");
  rejects({ ...valid, cwd: 5 }, "cwd");
  rejects({ ...valid, env: ["A=1"] }, "env");
  rejects({ ...valid, env: { A: 1 } }, "env.A");
  rejects({ ...valid, timeoutMs: "10" }, "timeoutMs");
  rejects({ ...valid, timeoutMs: 0 }, "timeoutMs");
  rejects({ ...valid, timeoutMs: 1.5 }, "timeoutMs");
  rejects({ ...valid, timeoutMs: 2 ** 31 }, "timeoutMs");
  rejects({ ...valid, killGraceMs: -1 }, "killGraceMs");
  rejects({ ...valid, label: 3 }, "label");
  rejects({ ...valid, stdinBase64: "***" }, "stdinBase64");
  rejects({ ...valid, stdinBase64: 12 }, "stdinBase64");
});

Deno.test("fromJSON rejects bad action names", () => {
  rejects({ ...valid, action: "Bento.Sign" }, "action");
  rejects({ ...valid, action: "bento sign" }, "action");
  rejects({ ...valid, action: "bento.*" }, "action");
  rejects({ ...valid, action: "observe" }, "action");
  rejects({ ...valid, action: "sync.push" }, "action");
});

Deno.test("fromJSON rejects NUL bytes in argv, env, cwd and script", () => {
  rejects({ ...valid, argv: ["echo", "a\0b"] }, "argv[1]");
  rejects({ ...valid, env: { A: "x\0" } }, "env.A");
  rejects({ ...valid, cwd: "/tmp\0/x" }, "cwd");
  rejects({ action: "a.b", kind: "shell", script: "echo\0" }, "script");
  rejects({ ...valid, label: "l\0" }, "label");
});

Deno.test("fromJSON rejects a relative cwd and invalid env names", () => {
  rejects({ ...valid, cwd: "tmp" }, "cwd");
  rejects({ ...valid, cwd: "./x" }, "cwd");
  rejects({ ...valid, cwd: "" }, "cwd");
  rejects({ ...valid, env: { "1A": "x" } }, "env.1A");
  rejects({ ...valid, env: { "A-B": "x" } }, "env.A-B");
  rejects({ ...valid, env: { "A=B": "x" } }, "env.A=B");
  rejects({ ...valid, env: { "": "x" } }, "env.");
});

Deno.test("the builders validate as strictly as fromJSON", () => {
  assertEquals(assertThrowsStepError(() => Step.shell("a.b", "x", { cwd: "rel" })).field, "cwd");
  assertEquals(
    assertThrowsStepError(() => Step.exec("a.b", ["x"], { env: { "B@D": "1" } })).field,
    "env.B@D",
  );
  assertEquals(
    assertThrowsStepError(() =>
      Step.exec("a.b", ["x"], { shell: true } as unknown as Record<string, never>)
    ).field,
    "shell",
  );
});
