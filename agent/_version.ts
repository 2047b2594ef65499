// The agent's version is the package's version, read from deno.json so that
// there is one place to bump it.

import meta from "../deno.json" with { type: "json" };

/** The version of ops-agent (and of the package it ships in). */
export const AGENT_VERSION: string = meta.version;
