// Small helpers that make values printable inside one-line error messages.

/** A short type description for error messages: "a string", "an array", ... */
export function typeName(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  if (value instanceof Uint8Array) return "bytes";
  return typeof value === "object" ? "an object" : `a ${typeof value}`;
}

/** A value cut short and escaped so it prints on one line. */
export function printable(value: string, max = 80): string {
  const cut = value.length > max ? `${value.slice(0, max)}…` : value;
  return JSON.stringify(cut).slice(1, -1);
}
