import { it } from "@effect/vitest"
import { FastCheck as fc } from "effect"
import { describe, expect } from "vitest"
import { isoTimeFormatter } from "../../src/lib/IsoTime.js"

const LAST_PLAIN_MS = 253_402_300_799_999
// Times a worker sees (clustered within seconds, so the remembered second is used) and any other.
const nearby = fc.tuple(fc.integer({ min: 0, max: LAST_PLAIN_MS - 10_000 }), fc.array(fc.integer({ min: 0, max: 9_999 }), { maxLength: 20 }))
  .map(([base, offsets]) => offsets.map((offset) => base + offset))
const anyTime = fc.oneof(fc.integer({ min: 0, max: LAST_PLAIN_MS }), fc.double({ min: 0, max: LAST_PLAIN_MS, noNaN: true }))

describe("isoTimeFormatter (the body's and the log line's timestamps)", () => {
  it.prop("writes exactly what toISOString writes, for any sequence of times", [fc.array(fc.oneof(anyTime, nearby.map((times) => times[0] ?? 0)), { maxLength: 30 }), nearby], ([times, clustered]) => {
    const format = isoTimeFormatter()
    for (const ms of [...times, ...clustered, ...times]) expect(format(ms)).toBe(new Date(ms).toISOString())
  })

  it("outside 1970–9999 it is toISOString itself, errors included", () => {
    const format = isoTimeFormatter()
    for (const ms of [-1, -86_400_000.5, LAST_PLAIN_MS + 1, 8.64e15]) expect(format(ms)).toBe(new Date(ms).toISOString())
    expect(() => format(Number.NaN)).toThrow(RangeError)
  })
})
