// Byte helpers shared by the framed protocols (the ssh supervisor's frames,
// the ssh wrapper's trailer, the WebSocket client).

/** `a` followed by `b`, in a new array (`b` itself when `a` is empty). */
export function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  if (a.length === 0) return b;
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

/** Where `needle` first starts in `data`, or -1. */
export function indexOfBytes(data: Uint8Array, needle: Uint8Array): number {
  let from = 0;
  for (;;) {
    const at = data.indexOf(needle[0], from);
    if (at < 0 || at + needle.length > data.length) return -1;
    let i = 1;
    while (i < needle.length && data[at + i] === needle[i]) i++;
    if (i === needle.length) return at;
    from = at + 1;
  }
}
