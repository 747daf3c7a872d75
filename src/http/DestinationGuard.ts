import * as Option from "effect/Option"
import { lookup as dnsLookup, type LookupAddress, type LookupOptions } from "node:dns"
import { isIP } from "node:net"

/**
 * SSRF guard: which addresses a webhook may not be sent to unless
 * WEBHOOK_ALLOW_PRIVATE_NETWORKS=true. Checked on the address actually connected to (the
 * resolver below feeds the socket), so DNS rebinding cannot swap in a private address after a check.
 */

interface Range {
  readonly base: bigint
  readonly bits: number
  readonly width: 32 | 128
  readonly label: string
}

const parseV4 = (address: string): bigint | undefined => {
  const parts = address.split(".")
  if (parts.length !== 4) return undefined
  let value = 0n
  for (const part of parts) {
    if (!/^\d{1,3}$/.test(part)) return undefined
    const octet = Number(part)
    if (octet > 255) return undefined
    value = (value << 8n) | BigInt(octet)
  }
  return value
}

const parseV6 = (input: string): bigint | undefined => {
  let address = input.toLowerCase()
  const zone = address.indexOf("%")
  if (zone !== -1) address = address.slice(0, zone)
  // A trailing dotted IPv4 part (::ffff:1.2.3.4) becomes two hex groups.
  const lastColon = address.lastIndexOf(":")
  const tail = address.slice(lastColon + 1)
  if (tail.includes(".")) {
    const v4 = parseV4(tail)
    if (v4 === undefined) return undefined
    address = `${address.slice(0, lastColon + 1)}${(v4 >> 16n).toString(16)}:${(v4 & 0xffffn).toString(16)}`
  }
  const halves = address.split("::")
  if (halves.length > 2) return undefined
  const head = halves[0] === "" ? [] : halves[0]!.split(":")
  const rest = halves.length === 2 ? (halves[1] === "" ? [] : halves[1]!.split(":")) : []
  const missing = 8 - head.length - rest.length
  if (halves.length === 1 ? missing !== 0 : missing < 1) return undefined
  const groups = [...head, ...Array<string>(halves.length === 2 ? missing : 0).fill("0"), ...rest]
  let value = 0n
  for (const group of groups) {
    if (!/^[0-9a-f]{1,4}$/.test(group)) return undefined
    value = (value << 16n) | BigInt(parseInt(group, 16))
  }
  return value
}

const range = (cidr: string, label: string): Range => {
  const [address, bits] = cidr.split("/") as [string, string]
  const v4 = parseV4(address)
  return v4 !== undefined
    ? { base: v4, bits: Number(bits), width: 32, label }
    : { base: parseV6(address)!, bits: Number(bits), width: 128, label }
}

const contains = (r: Range, value: bigint) => {
  const shift = BigInt(r.width - r.bits)
  return value >> shift === r.base >> shift
}

const V4_BLOCKED: ReadonlyArray<Range> = [
  range("0.0.0.0/8", "unspecified"),
  range("10.0.0.0/8", "private"),
  range("100.64.0.0/10", "carrier-grade NAT"),
  range("127.0.0.0/8", "loopback"),
  range("169.254.169.254/32", "cloud metadata"),
  range("169.254.0.0/16", "link-local"),
  range("172.16.0.0/12", "private"),
  range("192.0.0.0/24", "IETF protocol assignments"),
  range("192.0.2.0/24", "documentation"),
  range("192.88.99.0/24", "6to4 relay anycast"),
  range("192.168.0.0/16", "private"),
  range("198.18.0.0/15", "benchmarking"),
  range("198.51.100.0/24", "documentation"),
  range("203.0.113.0/24", "documentation"),
  range("224.0.0.0/4", "multicast"),
  range("240.0.0.0/4", "reserved"),
  range("255.255.255.255/32", "broadcast")
]

const V6_BLOCKED: ReadonlyArray<Range> = [
  range("::/128", "unspecified"),
  range("::1/128", "loopback"),
  range("64:ff9b:1::/48", "local-use NAT64"),
  range("100::/64", "discard-only"),
  range("2001::/32", "Teredo"),
  range("2001:2::/48", "benchmarking"),
  range("2001:db8::/32", "documentation"),
  range("3fff::/20", "documentation"),
  range("5f00::/16", "segment routing"),
  range("fd00:ec2::254/128", "cloud metadata"),
  range("fc00::/7", "unique local (private)"),
  range("fe80::/10", "link-local"),
  range("fec0::/10", "site-local"),
  range("ff00::/8", "multicast")
]

// Forms that embed an IPv4 address: the embedded address is judged by the IPv4 rules.
const V4_MAPPED = range("::ffff:0:0/96", "IPv4-mapped")
const V4_COMPATIBLE = range("::/96", "IPv4-compatible")
const NAT64 = range("64:ff9b::/96", "NAT64")
const SIX_TO_FOUR = range("2002::/16", "6to4")

const v4Text = (value: bigint) =>
  [24n, 16n, 8n, 0n].map((shift) => ((value >> shift) & 0xffn).toString()).join(".")

const v4Reason = (value: bigint): Option.Option<string> => {
  for (const r of V4_BLOCKED) if (contains(r, value)) return Option.some(r.label)
  return Option.none()
}

/** Why an IP address is not a public destination, or none when it is. */
export const blockedReason = (address: string): Option.Option<string> => {
  const v4 = parseV4(address)
  if (v4 !== undefined) return v4Reason(v4)
  const v6 = parseV6(address)
  if (v6 === undefined) return Option.some("not an IP address")
  for (const r of V6_BLOCKED) if (contains(r, v6)) return Option.some(r.label)
  const embedded = (r: Range, value: bigint) =>
    Option.map(v4Reason(value), (reason) => `${reason} (${v4Text(value)} as ${r.label})`)
  if (contains(V4_MAPPED, v6)) return embedded(V4_MAPPED, v6 & 0xffffffffn)
  if (contains(NAT64, v6)) return embedded(NAT64, v6 & 0xffffffffn)
  if (contains(SIX_TO_FOUR, v6)) return embedded(SIX_TO_FOUR, (v6 >> 80n) & 0xffffffffn)
  if (contains(V4_COMPATIBLE, v6)) return embedded(V4_COMPATIBLE, v6 & 0xffffffffn)
  return Option.none()
}

/** Error a guarded lookup gives when every address of a host is blocked. */
export class BlockedAddressError extends Error {
  readonly code = "EWEBHOOKBLOCKED"
  constructor(readonly hostname: string, readonly address: string, readonly reason: string) {
    super(`${hostname} resolves to ${address}, a ${reason} address`)
  }
}

type LookupCallback = (error: NodeJS.ErrnoException | null, address: string | Array<LookupAddress>, family?: number) => void

/**
 * A `dns.lookup` replacement for the HTTP agent's sockets: resolves, drops blocked addresses and
 * connects only to what is left, so the address checked is the address used.
 */
export const guardedLookup = (hostname: string, options: LookupOptions, callback: LookupCallback): void => {
    dnsLookup(hostname, { ...options, all: true }, (error, addresses) => {
      if (error) return callback(error, [])
      const allowed = addresses.filter((entry) => Option.isNone(blockedReason(entry.address)))
      if (allowed.length === 0) {
        const first = addresses[0]
        const reason = first === undefined ? "unknown" : Option.getOrElse(blockedReason(first.address), () => "blocked")
        return callback(new BlockedAddressError(hostname, first?.address ?? "?", reason), [])
      }
      if (options.all) return callback(null, allowed)
      const chosen = allowed[0]!
      callback(null, chosen.address, chosen.family)
    })
  }

/** The literal IP of a URL host (brackets stripped), if the host is one. Literal IPs skip DNS. */
export const literalAddress = (hostname: string): Option.Option<string> => {
  const bare = hostname.startsWith("[") && hostname.endsWith("]") ? hostname.slice(1, -1) : hostname
  return isIP(bare) === 0 ? Option.none() : Option.some(bare)
}
