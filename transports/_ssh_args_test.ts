import { assertEquals, assertInstanceOf, assertStringIncludes, assertThrows } from "@deps/assert";
import { ConfigError, TransportError } from "../executor/errors.ts";
import {
  checkSshOptions,
  configPath,
  sshFailure,
  sshOptionArgs,
  type SshTarget,
} from "./_ssh_args.ts";
import { rsyncRemoteShell } from "./_rsync.ts";

const target: SshTarget = {
  host: "web-1",
  user: "deploy",
  port: 2222,
  knownHostsFile: "/etc/ops/known hosts",
  identityFile: "/keys/id_%h",
  sshOptions: ["StrictHostKeyChecking=accept-new"],
  persistSeconds: 60,
};

// ssh's own words (OpenSSH 9.2, LogLevel=ERROR), as the sshd tests meet them.
const SAID = {
  refused: "ssh: connect to host 127.0.0.1 port 1: Connection refused",
  denied: "deploy@web-1: Permission denied (publickey).",
  changed: [
    "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@",
    "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @",
    "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@",
    "Offending ED25519 key in /etc/ops/known hosts:1",
    "Host key for [web-1]:2222 has changed and you have requested strict checking.",
    "Host key verification failed.",
  ].join("\n"),
  unknown: [
    "No ED25519 host key is known for [web-1]:2222 and you have requested strict checking.",
    "Host key verification failed.",
  ].join("\n"),
  badOption: "command-line: line 0: Bad configuration option: frobnicate",
  resolve: "ssh: Could not resolve hostname web-1: Name or service not known",
};

Deno.test("sshFailure tells each of ssh's own failures apart", () => {
  const kind = (said: string, stage: "connect" | "step" = "connect") => {
    const error = sshFailure(target, said, stage);
    assertInstanceOf(error, TransportError);
    assertEquals(error.host, "web-1");
    assertEquals(error.detail, said);
    return error.kind;
  };
  assertEquals(kind(SAID.refused), "unreachable");
  assertEquals(kind(SAID.resolve), "unreachable");
  assertEquals(kind(SAID.denied), "auth_refused");
  assertEquals(kind(SAID.changed), "host_key_changed");
  assertEquals(kind(SAID.unknown), "host_key_unknown");
  assertEquals(kind("client_loop: send disconnect: Broken pipe", "step"), "connection_lost");
  assertInstanceOf(sshFailure(target, SAID.badOption, "connect"), ConfigError);
});

Deno.test("sshFailure's messages say what to do", () => {
  assertStringIncludes(sshFailure(target, SAID.changed, "connect").message, "ssh-keygen -R");
  assertStringIncludes(sshFailure(target, SAID.unknown, "connect").message, "/etc/ops/known hosts");
  assertStringIncludes(sshFailure(target, SAID.denied, "connect").message, "authorized_keys");
  assertStringIncludes(
    sshFailure(target, SAID.refused, "connect").message,
    "deploy@web-1 port 2222",
  );
});

Deno.test("checkSshOptions takes Name=value options and refuses the ones SshExec manages", () => {
  assertEquals(checkSshOptions(["ProxyJump=bastion", "Ciphers aes128-gcm@openssh.com"]), [
    "ProxyJump=bastion",
    "Ciphers aes128-gcm@openssh.com",
  ]);
  assertThrows(() => checkSshOptions(["-v"]), ConfigError, "sshOptions[0]");
  assertThrows(() => checkSshOptions(["ok=1", "ControlPath=/tmp/x"]), ConfigError, "sshOptions[1]");
  assertThrows(() => checkSshOptions(["RequestTTY=yes"]), ConfigError, "managed");
  assertThrows(() => checkSshOptions(["A=b\nProxyCommand=x"]), ConfigError, "one-line");
  assertThrows(() => checkSshOptions("BatchMode=no"), ConfigError, "array");
});

Deno.test("sshOptionArgs: the caller's options first (they win), multiplexing last", () => {
  const args = sshOptionArgs(target, "/tmp/oe-x/m");
  const options = args.filter((_, i) => args[i - 1] === "-o");
  assertEquals(options[0], "StrictHostKeyChecking=accept-new");
  assertEquals(options.indexOf("StrictHostKeyChecking=yes") > 0, true);
  assertEquals(options.includes("ControlPath=/tmp/oe-x/m"), true);
  assertEquals(options.includes('UserKnownHostsFile="/etc/ops/known hosts"'), true);
  assertEquals(options.includes("IdentityFile=/keys/id_%%h"), true);
  assertEquals(args.slice(-4), ["-p", "2222", "-l", "deploy"]);
});

Deno.test("configPath escapes ssh's % tokens and quotes spaces", () => {
  assertEquals(configPath("/a/b"), "/a/b");
  assertEquals(configPath("/a b/%d"), '"/a b/%%d"');
  assertEquals(configPath('/a"b'), '"/a\\"b"');
});

Deno.test("rsyncRemoteShell quotes words for rsync's own splitter", () => {
  assertEquals(
    rsyncRemoteShell("/usr/bin/ssh", ["-o", 'UserKnownHostsFile="/a b"', "-o", "X='y z'"]),
    `/usr/bin/ssh -o 'UserKnownHostsFile="/a b"' -o "X='y z'"`,
  );
  assertThrows(() => rsyncRemoteShell("ssh", [`a'b"c d`]), ConfigError);
});
