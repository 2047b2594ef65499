// Address helpers: parse a `listen` value, unmap `::ffff:`-mapped IPv4
// addresses, tell loopback from the rest, and format IP:PORT for whois.

/** Where the agent listens. */
export interface ListenAddress {
  /** An IP literal (IPv6 without brackets). */
  hostname: string;
  /** The port; 0 picks a free one. */
  port: number;
}

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
const MAPPED = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i;

/** Whether `text` is a dotted-quad IPv4 address. */
export function isIPv4(text: string): boolean {
  return IPV4.test(text);
}

/** Whether `text` is an IPv6 address literal (without brackets or zone). */
export function isIPv6(text: string): boolean {
  if (!text.includes(":") || !/^[0-9a-fA-F:.]+$/.test(text)) return false;
  try {
    // The URL parser is a strict IPv6 parser.
    new URL(`http://[${text}]/`);
    return true;
  } catch {
    return false;
  }
}

/**
 * The IPv4 address inside an IPv4-mapped IPv6 address (`::ffff:100.1.2.3`
 * becomes `100.1.2.3`); any other address is returned as it is. Older
 * tailscale clients and dual-stack sockets hand out the mapped form.
 */
export function unmapAddress(address: string): string {
  const match = MAPPED.exec(address);
  return match && isIPv4(match[1]) ? match[1] : address;
}

/** Whether an address (mapped or not) is a loopback address. */
export function isLoopback(address: string): boolean {
  const ip = unmapAddress(address);
  if (isIPv4(ip)) return ip.startsWith("127.");
  return isIPv6(ip) && new URL(`http://[${ip}]/`).hostname === "[::1]";
}

/** `IP:PORT`, with brackets around an IPv6 address. */
export function formatHostPort(ip: string, port: number): string {
  return ip.includes(":") ? `[${ip}]:${port}` : `${ip}:${port}`;
}

/**
 * Parses `IP:PORT` (`100.101.102.103:7070`, `[fd7a:115c:a1e0::1]:7070`).
 * Returns a reason string when it does not parse. A name (`localhost`
 * included, which /etc/hosts may point anywhere) is refused: the agent binds
 * and trusts addresses, never what a name resolves to.
 */
export function parseListen(text: string): ListenAddress | string {
  const bracketed = /^\[([^\]]+)\]:(\d+)$/.exec(text);
  const plain = /^([^:\[\]]+):(\d+)$/.exec(text);
  const match = bracketed ?? plain;
  if (!match) {
    return 'must be "IP:PORT" (IPv6 in brackets, e.g. "[fd7a:115c:a1e0::1]:7070")';
  }
  const [, hostname, portText] = match;
  const port = Number(portText);
  if (!Number.isInteger(port) || port > 65535) return `port ${portText} is out of range`;
  if (!bracketed && /^localhost\.?$/i.test(hostname)) {
    return '"localhost" is a name, not an address, and /etc/hosts may point it anywhere: use 127.0.0.1 or [::1]';
  }
  if (bracketed ? !isIPv6(hostname) : !isIPv4(hostname)) {
    return `"${hostname}" is not an IP address (use the tailnet IP, not a host name)`;
  }
  return { hostname, port };
}
